"""Storage primitives shared by every command that writes to a volume.

atomic.py     a directory that appears only complete, replacing only a checkpoint of ours
lease.py      one writer per directory, across hosts, on shared filesystems
integrity.py  per-file checksums recorded at write and verified at read
space.py      free space and writability checked before a write starts
"""
