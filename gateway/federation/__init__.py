"""The federation layer: the client that sends signed envelopes to peers and the
server that receives them."""
