"""The decision core: rules in, a typed decision out. Pure: no I/O, no clock, no web framework."""
