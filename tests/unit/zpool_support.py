"""`zpool status` texts for the unit tests, in both dialects.

zfs-fuse samples (FUSE_*) are `zpool status` output captured on the lab's zfs-fuse 0.7.0
(Debian 12 package 0.7.0-25+b1) from a throwaway mirror pool of two 512 MiB files in /var/tmp
holding 430 MiB: while scrubbing, after a stop, during and after `zpool replace` by a file and
by a hot spare. zfs-fuse ends a spare's line with spaces: kept, as \\x20. OpenZFS samples
(OZFS_*) follow OpenZFS 2.1.11's cmd/zpool/zpool_main.c (print_scan_scrub_resilver_status,
print_rebuild_status_impl) line by line, with made-up figures; the device lists are as OpenZFS
prints them."""
from __future__ import annotations

# -- zfs-fuse 0.7, captured ------------------------------------------------------------------

FUSE_SCRUBBING = """\
  pool: h21pool
 state: ONLINE
 scrub: scrub in progress for 0h0m, 19.95% done, 0h0m to go
config:

\tNAME                    STATE     READ WRITE CKSUM
\th21pool                 ONLINE       0     0     0
\t  mirror-0              ONLINE       0     0     0
\t    /var/tmp/h21-a.img  ONLINE       0     0     0
\t    /var/tmp/h21-b.img  ONLINE       0     0     0

errors: No known data errors
"""

# After `zpool scrub -s` at 33% done: zfs-fuse says "completed", not "stopped".
FUSE_SCRUB_DONE = """\
  pool: h21pool
 state: ONLINE
 scrub: scrub completed after 0h0m with 0 errors on Sun Dec  6 05:46:53 2026
config:

\tNAME                    STATE     READ WRITE CKSUM
\th21pool                 ONLINE       0     0     0
\t  mirror-0              ONLINE       0     0     0
\t    /var/tmp/h21-a.img  ONLINE       0     0     0
\t    /var/tmp/h21-b.img  ONLINE       0     0     0

errors: No known data errors
"""

FUSE_RESILVERING = """\
  pool: h21pool
 state: ONLINE
status: One or more devices is currently being resilvered.  The pool will
\tcontinue to function, possibly in a degraded state.
action: Wait for the resilver to complete.
 scrub: resilver in progress for 0h0m, 67.38% done, 0h0m to go
config:

\tNAME                      STATE     READ WRITE CKSUM
\th21pool                   ONLINE       0     0     0
\t  mirror-0                ONLINE       0     0     0
\t    /var/tmp/h21-a.img    ONLINE       0     0     0
\t    replacing-1           ONLINE       0     0     0
\t      /var/tmp/h21-b.img  ONLINE       0     0     0
\t      /var/tmp/h21-c.img  ONLINE       0     0     0  290M resilvered

errors: No known data errors
"""

FUSE_OFFLINE_WITH_SPARE = """\
  pool: h21pool
 state: DEGRADED
status: One or more devices has been taken offline by the administrator.
\tSufficient replicas exist for the pool to continue functioning in a
\tdegraded state.
action: Online the device using 'zpool online' or replace the device with
\t'zpool replace'.
 scrub: resilver completed after 0h0m with 0 errors on Sun Dec  6 05:47:11 2026
config:

\tNAME                    STATE     READ WRITE CKSUM
\th21pool                 DEGRADED     0     0     0
\t  mirror-0              DEGRADED     0     0     0
\t    /var/tmp/h21-a.img  OFFLINE      0     0     0
\t    /var/tmp/h21-c.img  ONLINE       0     0     0  436M resilvered
\tspares
\t  /var/tmp/h21-d.img    AVAIL\x20\x20\x20

errors: No known data errors
"""

# `zpool replace h21pool /var/tmp/h21-a.img /var/tmp/h21-d.img` (the spare), mid-resilver
FUSE_SPARE_RESILVERING = """\
  pool: h21pool
 state: DEGRADED
status: One or more devices has been taken offline by the administrator.
\tSufficient replicas exist for the pool to continue functioning in a
\tdegraded state.
action: Online the device using 'zpool online' or replace the device with
\t'zpool replace'.
 scrub: resilver in progress for 0h0m, 79.00% done, 0h0m to go
config:

\tNAME                      STATE     READ WRITE CKSUM
\th21pool                   DEGRADED     0     0     0
\t  mirror-0                DEGRADED     0     0     0
\t    spare-0               DEGRADED     0     0     0
\t      /var/tmp/h21-a.img  OFFLINE      0     0     0
\t      /var/tmp/h21-d.img  ONLINE       0     0     0  341M resilvered
\t    /var/tmp/h21-c.img    ONLINE       0     0     0
\tspares
\t  /var/tmp/h21-d.img      INUSE     currently in use

errors: No known data errors
"""

# then `zpool replace h21pool /var/tmp/h21-a.img /var/tmp/h21-b.img`: the spare is free again
FUSE_REPLACED = """\
  pool: h21pool
 state: ONLINE
 scrub: resilver completed after 0h0m with 0 errors on Sun Dec  6 05:47:22 2026
config:

\tNAME                    STATE     READ WRITE CKSUM
\th21pool                 ONLINE       0     0     0
\t  mirror-0              ONLINE       0     0     0
\t    /var/tmp/h21-b.img  ONLINE       0     0     0  436M resilvered
\t    /var/tmp/h21-c.img  ONLINE       0     0     0
\tspares
\t  /var/tmp/h21-d.img    AVAIL\x20\x20\x20

errors: No known data errors
"""


# -- OpenZFS 2.1, after its source -------------------------------------------------------------

OZFS_SCRUBBING = """\
  pool: tank
 state: ONLINE
  scan: scrub in progress since Tue Jan  2 10:00:00 2024
\t1.23G scanned at 100M/s, 500M issued at 50.0M/s, 10.0G total
\t0B repaired, 4.88% done, 00:03:10 to go
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        ONLINE       0     0     0
\t  raidz1-0  ONLINE       0     0     0
\t    sda     ONLINE       0     0     0
\t    sdb     ONLINE       0     0     0
\t    sdc     ONLINE       0     0     0

errors: No known data errors
"""

OZFS_RESILVERING_SPARE = """\
  pool: tank
 state: DEGRADED
status: One or more devices could not be used because the label is missing or
\tinvalid.  Sufficient replicas exist for the pool to continue
\tfunctioning in a degraded state.
action: Replace the device using 'zpool replace'.
   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-4J
  scan: resilver in progress since Wed Feb 14 23:59:01 2024
\t3.01G scanned at 1.50G/s, 1.10G issued at 560M/s, 3.01G total
\t370M resilvered, 36.54% done, 2 days 01:02:03 to go
config:

\tNAME                      STATE     READ WRITE CKSUM
\ttank                      DEGRADED     0     0     0
\t  raidz2-0                DEGRADED     0     0     0
\t    spare-0               DEGRADED     0     0     0
\t      4242424242424242    FAULTED      0     0     0  was /dev/disk/by-id/virtio-vsnapdisk1
\t      /dev/disk/by-id/virtio-vsnapdisk5  ONLINE  0     0     0  (resilvering)
\t    /dev/disk/by-id/virtio-vsnapdisk2    ONLINE  0     0     0
\t    /dev/disk/by-id/virtio-vsnapdisk3    REMOVED 0     0     0
\t    /dev/disk/by-id/virtio-vsnapdisk4    ONLINE  0     0     0
\tspares
\t  /dev/disk/by-id/virtio-vsnapdisk5      INUSE     currently in use

errors: No known data errors
"""

OZFS_SLOW_SCRUB = """\
  pool: tank
 state: ONLINE
  scan: scrub in progress since Tue Jan  2 10:00:00 2024
\t1.23G scanned at 1M/s, 500M issued at 512K/s, 10.0G total
\t0B repaired, 4.88% done, no estimated completion time
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        ONLINE       0     0     0
\t  sda       ONLINE       0     0     0

errors: No known data errors
"""
