"""The service as ops run it, on one machine: replicas of ``avatar-service serve`` behind
HAProxy, sharing PostgreSQL, an S3 endpoint (moto's server) and Redis, with faults to inject.

- ``cluster.local``: start and stop the cluster, and break its parts (``make cluster``);
- ``cluster.tcpproxy``: the cuttable TCP proxy between the replicas and PostgreSQL or S3;
- ``cluster.load``: a steady, bounded load of uploads, re-crops, deletes and reads, checked;
- ``cluster.chaos``: the fault scenarios under that load (``make chaos``).

All traffic stays on loopback.
"""
