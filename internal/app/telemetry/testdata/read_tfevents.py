#!/usr/bin/python3
"""Reads a TensorBoard event file with Google's protobuf runtime, apart from
downpour's Go writer: the TFRecord framing and its masked CRC-32C are checked
here by a bit-by-bit CRC, and each record is parsed as tensorflow.Event
(the messages below are tensorflow/core/util/event.proto and
tensorflow/core/framework/summary.proto, cut to the fields a scalar uses).

Prints one JSON object per event: {"wall_time", "step", "file_version"} or
{"wall_time", "step", "scalars": {tag: value}}. Exits 1 naming the first
record that is wrong. Needs Debian's python3-protobuf.
"""
import json
import struct
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def event_class():
    fd = descriptor_pb2.FileDescriptorProto(name="event.proto", package="tensorflow", syntax="proto3")
    value = fd.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL, oneof_index=0)
    value.oneof_decl.add(name="value")
    summary = fd.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".tensorflow.Value")
    event = fd.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, oneof_index=0)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, oneof_index=0,
                    type_name=".tensorflow.Summary")
    event.oneof_decl.add(name="what")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName("tensorflow.Event"))


def main(path):
    Event = event_class()
    data = open(path, "rb").read()
    off, n = 0, 0
    while off < len(data):
        n += 1
        if len(data) - off < 12:
            sys.exit(f"record {n}: {len(data) - off} bytes left, a header needs 12")
        header = data[off:off + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[off + 8:off + 12])
        if crc != masked(header):
            sys.exit(f"record {n}: length CRC {crc:#x}, want {masked(header):#x}")
        body = data[off + 12:off + 12 + length]
        if len(body) != length or len(data) < off + 16 + length:
            sys.exit(f"record {n}: truncated")
        (crc,) = struct.unpack("<I", data[off + 12 + length:off + 16 + length])
        if crc != masked(body):
            sys.exit(f"record {n}: data CRC {crc:#x}, want {masked(body):#x}")
        off += 16 + length
        ev = Event()
        ev.ParseFromString(body)
        if ev.SerializeToString() != body:
            sys.exit(f"record {n}: not in the canonical encoding")
        out = {"wall_time": ev.wall_time, "step": ev.step}
        if ev.WhichOneof("what") == "file_version":
            out["file_version"] = ev.file_version
        else:
            out["scalars"] = {v.tag: v.simple_value for v in ev.summary.value}
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
