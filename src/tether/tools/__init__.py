"""Tools the model can call: built-ins, Python plugins and MCP servers."""
