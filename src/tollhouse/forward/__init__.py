"""Forward-proxy mode: an HTTP CONNECT proxy that intercepts the providers' hosts and tunnels every other one."""
