package config

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

// flags is a flag set with every kind of value a command has.
func flags() (*flag.FlagSet, Rules) {
	fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
	fs.Int("steps", 300, "training steps")
	fs.Int64("every", 0, "every N")
	fs.Uint64("seed", 1, "seed")
	fs.Float64("lr", 0.5, "learning rate")
	fs.Bool("reverse", true, "reverse")
	fs.Duration("timeout", 5*time.Second, "timeout")
	fs.String("mode", "sync", "mode")
	fs.String("data", "", "data")
	fs.String("preset", "", "preset")
	fs.String("config", "", "config")
	return fs, Rules{Skip: map[string]bool{"config": true}, Choices: map[string][]string{"mode": {"sync", "async"}},
		OmitEmpty: map[string]bool{"preset": true}}
}

func TestParseKeepsFileOrderAndLines(t *testing.T) {
	es, err := Parse([]byte("# a job\nsteps: 10\n\nlr: 1e-3   # small\ndata: \"x: y\"\nmode: &m sync\nreverse: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{{"steps", "10", 2}, {"lr", "1e-3", 4}, {"data", "x: y", 5}, {"mode", "sync", 6}, {"reverse", "false", 7}}
	if len(es) != len(want) {
		t.Fatalf("%+v", es)
	}
	for i := range want {
		if es[i] != want[i] {
			t.Fatalf("entry %d: %+v, want %+v", i, es[i], want[i])
		}
	}
}

// Aliases of scalars are their values; an alias of a list is refused as any
// list is, so no alias can expand into something large.
func TestParseAliases(t *testing.T) {
	es, err := Parse([]byte("data: &d corpus.tsv\nmode: *d\n"))
	if err != nil || len(es) != 2 || es[1].Value != "corpus.tsv" {
		t.Fatalf("%+v %v", es, err)
	}
	if _, err := Parse([]byte("a: &l [1, 2]\nb: *l\n")); err == nil || !strings.Contains(err.Error(), "single value") {
		t.Fatalf("an alias of a list: %v", err)
	}
}

func TestParseRefusesOversizeFiles(t *testing.T) {
	big := bytes.Repeat([]byte("# padding\n"), MaxBytes/10+1)
	if _, err := Parse(big); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("%d bytes: %v", len(big), err)
	}
}

// Write then Parse and Apply sets every flag to the value it had, including
// strings that read as other types in YAML.
func TestWriteApplyRoundTrip(t *testing.T) {
	fs, r := flags()
	for k, v := range map[string]string{"steps": "7", "every": "-3", "seed": "18446744073709551615", "lr": "0.1",
		"reverse": "false", "timeout": "1m30s", "mode": "async", "data": "true"} {
		fs.Set(k, v)
	}
	var b bytes.Buffer
	if err := r.Write(&b, fs, "a header"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "preset") || strings.Contains(b.String(), "config:") {
		t.Fatalf("wrote an empty omitted flag or a skipped one:\n%s", b.String())
	}
	es, err := Parse(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	fs2, _ := flags()
	if err := r.Apply(fs2, "f.yaml", es); err != nil {
		t.Fatal(err)
	}
	fs.VisitAll(func(f *flag.Flag) {
		if got := fs2.Lookup(f.Name).Value.String(); got != f.Value.String() {
			t.Errorf("%s: %q after the round trip, want %q\n%s", f.Name, got, f.Value.String(), b.String())
		}
	})
}

func TestApplyErrorsNameTheKey(t *testing.T) {
	for _, c := range []struct{ file, says string }{
		{"step: 1\n", `unknown key "step" (did you mean "steps"?)`},
		{"Timeout: 1s\n", `did you mean "timeout"`},
		{"zzzzzzzz: 1\n", `unknown key "zzzzzzzz"; the keys`},
		{"config: x\n", `unknown key "config"`},
		{"steps: 1.5\n", `line 1: steps: "1.5" is not an integer (training steps)`},
		{"seed: -1\n", "is not a non-negative integer"},
		{"mode: bsp\n", `mode: "bsp" is not allowed; use one of sync, async`},
	} {
		fs, r := flags()
		es, err := Parse([]byte(c.file))
		if err == nil {
			err = r.Apply(fs, "f.yaml", es)
		}
		if err == nil || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "f.yaml") {
			t.Errorf("%q: %v, want it to say %q and name the file", c.file, err, c.says)
		}
	}
}

// No file crashes Parse or Apply; whatever Parse accepts, Apply either sets
// or refuses with an error naming the file.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"../../examples/seq2seq-paper.yaml", "../../examples/seq2seq-small.yaml", "../../examples/gan-mnist-paper.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("steps: 1\nsteps: 2\n"))
	f.Add([]byte("a: &x 1\nb: *x\n"))
	f.Add([]byte("steps: [1, 2]\n---\nx: {a: 1}\n"))
	f.Add([]byte("? [a]\n: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		es, err := Parse(data)
		if err != nil {
			return
		}
		fs, r := flags()
		if err := r.Apply(fs, "f.yaml", es); err != nil && !strings.Contains(err.Error(), "f.yaml") {
			t.Fatalf("an error that does not name the file: %v", err)
		}
	})
}
