"""Management of a running gateway, split by concern (plugin archives so far)."""
