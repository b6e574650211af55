"""A multi-node KRaft cluster on loopback, for fault tests (kill a broker, bring it back).

Every node is both broker and controller (a three-node quorum survives one loss), formatted
with one cluster id, with internal topics replicated three times and min.insync.replicas 2:
the shape of a production cluster, small enough for a laptop.
"""

from __future__ import annotations

import time
from pathlib import Path

from eventplatform.kafka.broker import (
    BrokerConfig,
    BrokerError,
    LocalBroker,
    broker_answers,
    free_port,
    new_cluster_id,
)
from eventplatform.kafka.clients import make_admin


class LocalCluster:
    def __init__(
        self,
        libs_dir: Path,
        data_dir: Path,
        nodes: int = 3,
        heap: str = "320m",
        host: str = "127.0.0.1",
    ) -> None:
        ports = [(free_port(host), free_port(host)) for _ in range(nodes)]
        voters = ",".join(f"{i + 1}@{host}:{c}" for i, (_, c) in enumerate(ports))
        replication = str(min(3, nodes))
        overrides = {
            "controller.quorum.voters": voters,
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": str(min(2, nodes)),
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": str(min(2, nodes)),
            "default.replication.factor": replication,
            "min.insync.replicas": str(min(2, nodes)),
            "unclean.leader.election.enable": "false",
        }
        cluster_id = new_cluster_id()
        self.brokers = [
            LocalBroker(
                BrokerConfig(
                    libs_dir=libs_dir,
                    data_dir=data_dir / f"node-{i + 1}",
                    host=host,
                    port=port,
                    controller_port=controller,
                    heap=heap,
                    node_id=i + 1,
                    cluster_id=cluster_id,
                    overrides=overrides,
                    start_timeout_s=90,
                )
            )
            for i, (port, controller) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(b.config.bootstrap for b in self.brokers)

    def start(self) -> None:
        """Start every node at once (a quorum needs a majority up to elect a leader)."""
        import threading

        errors: list[Exception] = []

        def start(broker: LocalBroker) -> None:
            try:
                broker.start()
            except Exception as exc:  # surfaced below with the node's log
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(b,)) for b in self.brokers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise BrokerError(f"cluster did not start: {errors[0]}")
        self.wait_for_brokers(len(self.brokers))

    def wait_for_brokers(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if len(make_admin(self.bootstrap).list_topics(timeout=2).brokers) >= count:
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise BrokerError(f"fewer than {count} brokers registered within {timeout_s}s")

    def kill(self, index: int) -> None:
        self.brokers[index].kill()

    def restart(self, index: int) -> None:
        broker = self.brokers[index]
        broker.config.pid_file.unlink(missing_ok=True)
        broker.start()
        self.wait_for_brokers(len(self.brokers))

    def stop(self) -> None:
        for broker in self.brokers:
            broker.stop()

    def answering(self) -> list[bool]:
        return [broker_answers(b.config.bootstrap, timeout_s=1) for b in self.brokers]
