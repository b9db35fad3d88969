"""Native plugins: CLIProxyAPI's C ABI, loaded in process (see `loader`, `plugin`, `abi`)."""
