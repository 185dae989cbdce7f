package telemetry

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// EventWriter writes scalars to a TensorBoard event file, so that
// `tensorboard --logdir runs` shows every run's curves. The file is a
// sequence of TFRecords, each one tensorflow.Event protocol buffer:
//
//	record: uint64 length, uint32 masked CRC-32C of the length's 8 bytes,
//	        the event, uint32 masked CRC-32C of the event (all little-endian)
//	Event:  double wall_time = 1; int64 step = 2;
//	        oneof { string file_version = 3; Summary summary = 5; }
//	Summary: repeated Value value = 1;
//	Value:   string tag = 1; float simple_value = 2;
//
// The first event names the format ("brain.Event:2"), as TensorFlow's writer
// does. Each write is one write call of whole records, so a reader that
// follows the file as it grows sees no torn record unless the disk fills.
type EventWriter struct {
	f    *os.File
	path string
	buf  []byte
	err  error
}

// EventFileVersion is the file_version of an event file's first event.
const EventFileVersion = "brain.Event:2"

// eventFiles numbers the event files a process creates.
var eventFiles atomic.Int64

// NewEventWriter creates an event file in dir, named as TensorFlow's writer
// names them (TensorBoard finds files whose name holds "tfevents"), with the
// pid and a count added so that two writers, or a resumed run, never share
// one.
func NewEventWriter(dir string, now time.Time) (*EventWriter, error) {
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	path := filepath.Join(dir, fmt.Sprintf("events.out.tfevents.%010d.%s.%d.%d", now.Unix(), host, os.Getpid(), eventFiles.Add(1)))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("tensorboard events: %w", err)
	}
	w := &EventWriter{f: f, path: path}
	w.buf = appendRecord(w.buf[:0], appendEventHeader(nil, now, 0, func(b []byte) []byte {
		return appendBytesField(b, 3, []byte(EventFileVersion))
	}))
	w.flush()
	if w.err != nil {
		f.Close()
		return nil, w.err
	}
	return w, nil
}

// Path is the event file's path.
func (w *EventWriter) Path() string { return w.path }

// A Scalar is one tagged value of a step.
type Scalar struct {
	Tag   string
	Value float64
}

// Scalars writes one event holding the values of step, at wall time at.
// Values that are not finite are written as they are (TensorBoard shows
// them as such); an empty list writes nothing.
func (w *EventWriter) Scalars(step int64, at time.Time, values ...Scalar) error {
	if w.err != nil || len(values) == 0 {
		return w.err
	}
	ev := appendEventHeader(nil, at, step, func(b []byte) []byte {
		var sum []byte
		for _, v := range values {
			var val []byte
			val = appendBytesField(val, 1, []byte(v.Tag))
			val = appendTag(val, 2, 5) // fixed32
			val = binary.LittleEndian.AppendUint32(val, math.Float32bits(float32(v.Value)))
			sum = appendBytesField(sum, 1, val)
		}
		return appendBytesField(b, 5, sum)
	})
	w.buf = appendRecord(w.buf[:0], ev)
	w.flush()
	return w.err
}

func (w *EventWriter) flush() {
	if _, err := w.f.Write(w.buf); err != nil && w.err == nil {
		w.err = fmt.Errorf("tensorboard events: %w", err)
	}
}

// Close closes the file, returning the first error of any write.
func (w *EventWriter) Close() error {
	if err := w.f.Close(); err != nil && w.err == nil {
		w.err = err
	}
	return w.err
}

// appendEventHeader appends an Event's wall time (seconds, as a double) and
// step, then what body appends.
func appendEventHeader(b []byte, at time.Time, step int64, body func([]byte) []byte) []byte {
	b = appendTag(b, 1, 1) // fixed64
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(float64(at.Unix())+float64(at.Nanosecond())/1e9))
	if step != 0 { // proto3: a zero is left out
		b = appendTag(b, 2, 0) // varint
		b = binary.AppendUvarint(b, uint64(step))
	}
	return body(b)
}

func appendTag(b []byte, field, wireType int) []byte {
	return binary.AppendUvarint(b, uint64(field<<3|wireType))
}

func appendBytesField(b []byte, field int, v []byte) []byte {
	b = appendTag(b, field, 2) // length-delimited
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maskedCRC is TFRecord's masked CRC-32C: rotated right by 15 bits and
// offset, so that a CRC of data holding CRCs is not trivially related.
func maskedCRC(b []byte) uint32 {
	c := crc32.Checksum(b, castagnoli)
	return (c>>15 | c<<17) + 0xa282ead8
}

// appendRecord appends data framed as a TFRecord.
func appendRecord(b, data []byte) []byte {
	n := len(b)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(data)))
	b = binary.LittleEndian.AppendUint32(b, maskedCRC(b[n:n+8]))
	b = append(b, data...)
	return binary.LittleEndian.AppendUint32(b, maskedCRC(data))
}
