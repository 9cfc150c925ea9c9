"""Coordination on etcd: leases, service discovery, workshop ids and leader election.

The cluster edition keeps its shared coordination state in etcd; the embedded
edition has none (one process needs no coordination). Modules:

* :mod:`~northpole.coord.keys`: every etcd key and prefix northpole uses.
* :mod:`~northpole.coord.settings`: the ``coord`` settings group.
* :mod:`~northpole.coord.client`: the asyncio etcd client and its error mapping.
* :mod:`~northpole.coord.deadline` and :mod:`~northpole.coord.leases`: a lease kept
  alive, with a local, monotonic deadline past which its holder must stop.
* :mod:`~northpole.coord.discovery`: registration, health and the resolver.
* :mod:`~northpole.coord.workshop`: workshop ids leased from etcd for the Gift ID part.
* :mod:`~northpole.coord.election`: leader election with fencing tokens.
"""
