"""``python -m cluster start|stop|status`` (``make cluster``, ``make cluster-stop``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster import local


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=local.__doc__)
    parser.add_argument("--state-dir", type=Path, default=local.DEFAULT_STATE_DIR)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start the cluster and return")
    start.add_argument("--replicas", type=int, default=3)
    start.add_argument("--port", type=int, default=8800, help="HAProxy's port on 127.0.0.1")
    start.add_argument("--postgres-url", default=local.DEFAULT_POSTGRES_URL)
    start.add_argument("--database", default="avatar_cluster")
    start.add_argument("--rate-limit", default="30/minute")
    commands.add_parser("stop", help="stop every process of the cluster")
    commands.add_parser("status", help="the processes, their ports and HAProxy's view")
    token = commands.add_parser("token", help="print a bearer token the replicas accept")
    token.add_argument("user_id")
    args = parser.parse_args()

    if args.command == "start":
        try:
            cluster = local.start(
                replicas=args.replicas,
                port=args.port,
                state_dir=args.state_dir,
                postgres_url=args.postgres_url,
                database=args.database,
                rate_limit=args.rate_limit,
            )
        except local.ClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{len(cluster.replicas)} replicas behind HAProxy at {cluster.base_url}")
        print(f"state and logs in {cluster.state_dir}")
        print(f"a token for alice: {sys.executable} -m cluster token alice")
        return 0
    if not (args.state_dir / "state.json").exists():
        print("no cluster is running", file=sys.stderr)
        return 0 if args.command == "stop" else 1
    cluster = local.Cluster.load(args.state_dir)
    if args.command == "stop":
        local.stop(cluster)
        print("cluster stopped")
        return 0
    if args.command == "token":
        from app.core.security import create_token

        print(create_token(cluster.settings(), args.user_id))
        return 0
    for name, process in sorted(cluster.processes.items()):
        state = "running" if process.alive() else "not running"
        print(f"{name:10} pid {process.pid:<8} port {process.port:<6} {state}")
    if cluster.processes["haproxy"].alive():
        for name, state in sorted(local.server_states(cluster).items()):
            print(f"haproxy sees {name}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
