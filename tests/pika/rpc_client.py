#!/usr/bin/env python3
"""RabbitMQ tutorial 6's RPC client (pika), as published, with the queue, the broker and a time
limit taken from the command line: prints the first reply with its correlation id, as the
tutorial does. Usage: rpc_client.py URL QUEUE N"""
import sys
import time
import uuid

import pika


class FibonacciRpcClient(object):
    def __init__(self, url, queue):
        self.queue = queue
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        result = self.channel.queue_declare(queue='', exclusive=True)
        self.callback_queue = result.method.queue
        self.channel.basic_consume(
            queue=self.callback_queue,
            on_message_callback=self.on_response,
            auto_ack=True)
        self.response = None
        self.corr_id = None

    def on_response(self, ch, method, props, body):
        if self.corr_id == props.correlation_id:
            self.response = body

    def call(self, n):
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange='',
            routing_key=self.queue,
            properties=pika.BasicProperties(
                reply_to=self.callback_queue,
                correlation_id=self.corr_id,
            ),
            body=str(n))
        deadline = time.monotonic() + 30
        while self.response is None and time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=1)
        return self.response


url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = FibonacciRpcClient(url, queue)
response = client.call(n)
if response is None:
    sys.exit("no reply within 30 s")
print(response.decode())
client.connection.close()
