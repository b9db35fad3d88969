"""Plugin hosting: discovery, go-plugin processes, restarts, the host-side client."""
