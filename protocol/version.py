"""Protocol version. Bump on any incompatible change to a message's fields."""

PROTOCOL_VERSION = 2  # 2: plots (request.plot; result.labels, infotexts; progress.cell)
