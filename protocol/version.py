"""Protocol version. Bump on any incompatible change to a message's fields."""

PROTOCOL_VERSION = 1
