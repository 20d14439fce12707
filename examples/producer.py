#!/usr/bin/env python3
"""A producer of notification jobs for apns-worker, in Python with pika.

Copy it into the service that decides to notify: one job per device token, published
persistent to the jobs queue with publisher confirms, a stable `id` (the apns-id is
derived from it, so retries and redeliveries are recognised), and the W3C traceparent
of the current trace so the worker's span joins it.

    pip install pika==1.4.4
    python3 examples/producer.py --url amqp://guest:guest@127.0.0.1:5672/%2f \
        --queue apns.jobs --count 3

The job format is schemas/notification-job.schema.json.
"""

import argparse
import json
import os
import time
import uuid

import pika


def job(device_token: str, title: str, body: str, topic: str, job_id: str) -> dict:
    return {
        "id": job_id,
        "device_token": device_token,
        "topic": topic,
        "push_type": "alert",
        "priority": 10,
        "payload": {
            "aps": {"alert": {"title": title, "body": body}, "sound": "default"},
            "deep_link": "myapp://orders/42",
        },
    }


def traceparent() -> str:
    # In a traced service, take this from the current span instead.
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    p.add_argument("--queue", default="apns.jobs")
    p.add_argument("--topic", default="com.example.app")
    p.add_argument("--count", type=int, default=1)
    args = p.parse_args()

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.confirm_delivery()  # basic_publish raises if the broker does not confirm
    for i in range(args.count):
        job_id = str(uuid.uuid4())
        token = os.urandom(32).hex()
        body = json.dumps(job(token, "Shipped", f"Order {i} is on its way", args.topic, job_id))
        ch.basic_publish(
            exchange="",
            routing_key=args.queue,
            body=body.encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=job_id,
                timestamp=int(time.time()),
                headers={
                    "traceparent": traceparent(),
                    "x-published-at-ms": int(time.time() * 1000),
                },
            ),
            mandatory=True,  # an unroutable job raises instead of vanishing
        )
        print(job_id)
    conn.close()


if __name__ == "__main__":
    main()
