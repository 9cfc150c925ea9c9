"""Processes for the coordination fault tests: a Gift ID generator and a registered instance.

Usage::

    python coord_proc.py generate ENDPOINTS OUT_FILE DATA_DIR TTL_S
    python coord_proc.py register ENDPOINTS INSTANCE_ID TTL_S

``generate`` runs the Gift ID service on an etcd-leased workshop id and appends
every ID it issues to OUT_FILE, one per line, until SIGTERM. ``register``
registers service ``probe`` and waits for SIGTERM. ENDPOINTS is comma-separated.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from northpole.coord.client import EtcdClient
from northpole.coord.discovery import ServiceRegistrar
from northpole.coord.settings import CoordSettings, parse_endpoints
from northpole.coord.workshop import EtcdWorkshopAllocator
from northpole.core.app import Readiness
from northpole.core.errors import Unavailable
from northpole.core.metrics import new_registry
from northpole.core.settings import IdGenSettings
from northpole.idgen.service import IdGenService


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


async def generate(settings: CoordSettings, out: Path, data_dir: Path) -> None:
    """Issue IDs in small batches as fast as the lease allows, appending them to ``out``."""
    stop = _stop_event()
    service = IdGenService(
        IdGenSettings(),
        data_dir=data_dir,
        registry=new_registry(),
        allocator=EtcdWorkshopAllocator(settings),
    )
    async with service.lifespan():
        with out.open("a") as sink:
            while not stop.is_set():
                try:
                    ids = service.generate_list(4)
                except Unavailable:
                    ids = []
                if ids:
                    sink.write("".join(f"{i}\n" for i in ids))
                    sink.flush()
                await asyncio.sleep(0.002)


async def register(settings: CoordSettings, instance_id: str) -> None:
    """Register service ``probe`` until SIGTERM."""
    stop = _stop_event()
    async with EtcdClient(settings.endpoints or []) as client:
        registrar = ServiceRegistrar(
            client,
            settings,
            services={"probe": lambda: Readiness(True)},
            instance_id=instance_id,
            address="http://127.0.0.1:1",
            version="test",
        )
        await registrar.start()
        print("registered", flush=True)
        await stop.wait()
        await registrar.stop()


def main(argv: list[str]) -> None:
    """Run the mode named by ``argv[0]``."""
    mode, endpoints = argv[0], parse_endpoints(argv[1])
    if mode == "generate":
        settings = CoordSettings(endpoints=endpoints, lease_ttl_s=int(argv[4]))
        asyncio.run(generate(settings, Path(argv[2]), Path(argv[3])))
    elif mode == "register":
        settings = CoordSettings(endpoints=endpoints, lease_ttl_s=int(argv[3]))
        asyncio.run(register(settings, argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
