"""Scheduling: the task board (global FIFO, admission, retention sweeper) and the inference workers."""
