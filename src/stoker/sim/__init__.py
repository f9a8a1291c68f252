"""Trace loaders and a discrete-event simulator that drives `stoker.sched`."""
