"""Process plumbing: devices and autocast, distributed launch, stop signals, logging, and the
speed switches (`fast`)."""
