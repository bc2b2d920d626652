"""Baseline producers for bench/run.sh, sending the rows of a CSV to a Kafka topic.

seeds: the way the seed reports did it -- kafka-python, one dict and json.dumps per row.
       bench/run.sh times the whole process.
raw:   librdkafka through confluent-kafka sending the same messages sluice sends (key = Date,
       value = the typed JSON row), encoded *before* the clock starts: only produce + flush is
       timed, so this is the ceiling of a producer of these rows on this broker.
lines: the same, sending each CSV line as it is (smaller messages), for reference.
consume: reads a topic written by raw, doing nothing: the broker's consume ceiling.
Prints the number of rows sent and, for raw and lines, the seconds of the timed part.
"""
import csv
import json
import sys
import time


def seeds(path, bootstrap, topic):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[bootstrap])
    sent = 0
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            producer.send(topic, json.dumps(row).encode("utf-8"))
            sent += 1
    producer.flush()
    return sent


def typed_rows(path):
    """(key, value) as sluice's csv source emits them: Date as text, numbers typed, null as null."""
    types = {"Date": str, "Volume": int}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            value = {k: (None if v == "null" else types.get(k, float)(v)) for k, v in row.items()}
            yield row["Date"].encode(), json.dumps(value, separators=(",", ":")).encode()


def produce_all(messages, bootstrap, topic):
    from confluent_kafka import Producer

    failed = []
    # Reports only for failed deliveries: failures are still caught, without a Python call per message.
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "partitioner": "murmur2_random",
        "delivery.report.only.error": True,
        "on_delivery": lambda e, m: failed.append(e),
    })
    started = time.perf_counter()
    for i, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush()
    elapsed = time.perf_counter() - started
    if failed:
        raise SystemExit(f"{len(failed)} deliveries failed: {failed[0]}")
    return len(messages), elapsed


def raw(path, bootstrap, topic):
    return produce_all(list(typed_rows(path)), bootstrap, topic)


def lines(path, bootstrap, topic):
    with open(path, "rb") as f:
        next(f)
        messages = [(line[:10], line) for line in f]
    return produce_all(messages, bootstrap, topic)


def consume(path, bootstrap, topic):
    """Reads every message of `topic` doing nothing with them: the broker's consume ceiling."""
    from confluent_kafka import Consumer, TopicPartition

    # The fetch settings sluice's consumers use (they double tansu's consume rate).
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-raw-consume", "enable.auto.commit": False,
                         "fetch.min.bytes": 1048576, "fetch.wait.max.ms": 100})
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    expected = sum(1 for _ in open(path, "rb")) - 1
    read = 0
    started = time.perf_counter()
    while read < expected:
        read += len(consumer.consume(10000, 1.0))
    return read, time.perf_counter() - started


def create_topic(bootstrap, topic, partitions=10):
    """The same layout sluice's runs use (tansu does not create topics on first use)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result()


if __name__ == "__main__":
    kind, path, bootstrap, topic = sys.argv[1:5]
    if kind == "create":
        create_topic(bootstrap, topic)
    else:
        result = {"seeds": seeds, "raw": raw, "lines": lines, "consume": consume}[kind](path, bootstrap, topic)
        print(*result) if isinstance(result, tuple) else print(result)
