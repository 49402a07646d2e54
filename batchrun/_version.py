"""batchrun's version, alone: the watchdog and local workers import this, not `batchrun`."""

__version__ = "0.1.0"
