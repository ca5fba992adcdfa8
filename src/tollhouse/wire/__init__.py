"""HTTP/1.1 on the event loop: the server the gateway listens with and the client it calls upstreams with."""
