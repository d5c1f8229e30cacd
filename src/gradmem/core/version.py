"""The version of gradmem (the package exports it as `gradmem.__version__`)."""

VERSION = "0.1.0"
