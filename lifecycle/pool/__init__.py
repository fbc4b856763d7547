"""The live pool in Redis: key names, Lua scripts, the calls that read and write them, and their executor."""
