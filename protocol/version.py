"""Protocol version. Bump on any incompatible change to a message's fields."""

# 2: plots (request.plot; result.labels, infotexts; progress.cell)
# 3: big binary fields travel out of band, each as its own websocket message (protocol/oob.py)
PROTOCOL_VERSION = 3
SUPPORTED_PROTOCOLS = (2, 3)  # what a server answers: a protocol-2 client is served as before
