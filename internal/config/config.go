// Package config reads and writes a command's flags as a YAML file: its keys
// are the flags, one to one ("ps-shards: 4" is --ps-shards 4), each with a
// single scalar value; flags on the command line override the file.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxBytes bounds a config file: a job has a few dozen keys.
const MaxBytes = 1 << 20

// Entry is one key of a config file.
type Entry struct {
	Key, Value string
	Line       int
}

// Parse reads a config file's keys and values, in file order. It
// refuses anything but a mapping of distinct keys to single values.
func Parse(data []byte) ([]Entry, error) {
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("%d bytes: a config file holds at most %d", len(data), MaxBytes)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty: nothing set
		}
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, errors.New("holds more than one YAML document")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("not a YAML document")
	}
	m := doc.Content[0]
	if m.Kind == yaml.ScalarNode && m.Tag == "!!null" {
		return nil, nil // only comments
	}
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of flag names to values (such as \"steps: 300\")", m.Line)
	}
	seen := map[string]int{}
	var out []Entry
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag == "!!null" {
			return nil, fmt.Errorf("line %d: a key must be a flag name", k.Line)
		}
		if prev, dup := seen[k.Value]; dup {
			return nil, fmt.Errorf("line %d: key %q is already set on line %d", k.Line, k.Value, prev)
		}
		seen[k.Value] = k.Line
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		if v == nil || v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: key %q: want a single value, not a list or a mapping", k.Line, k.Value)
		}
		if v.Tag == "!!null" {
			return nil, fmt.Errorf("line %d: key %q has no value", k.Line, k.Value)
		}
		out = append(out, Entry{Key: k.Value, Value: v.Value, Line: k.Line})
	}
	return out, nil
}

// Read reads and parses the config file at path.
func Read(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	entries, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return entries, nil
}

// Rules say which of a command's flags a config file may set, and which take
// one of a few words.
type Rules struct {
	Skip      map[string]bool     // flags a config cannot set (they say what to do with one)
	Choices   map[string][]string // the words allowed for a flag, where only some are
	OmitEmpty map[string]bool     // flags Write leaves out while they are empty
}

// Apply sets fs's flags from entries (read from path); the command line,
// parsed after, overrides them.
func (r Rules) Apply(fs *flag.FlagSet, path string, entries []Entry) error {
	for _, e := range entries {
		f := fs.Lookup(e.Key)
		if f == nil || r.Skip[e.Key] {
			return fmt.Errorf("config %s line %d: unknown key %q%s; the keys are the flags of 'downpour %s --help'",
				path, e.Line, e.Key, r.suggest(fs, e.Key), fs.Name())
		}
		if c := r.Choices[e.Key]; c != nil && !slices.Contains(c, e.Value) {
			return fmt.Errorf("config %s line %d: %s: %q is not allowed; use one of %s", path, e.Line, e.Key, e.Value, strings.Join(c, ", "))
		}
		if err := fs.Set(e.Key, e.Value); err != nil {
			return fmt.Errorf("config %s line %d: %s: %q is not %s (%s)", path, e.Line, e.Key, e.Value, kindOf(f), f.Usage)
		}
	}
	return nil
}

// kindOf says what kind of value flag f takes.
func kindOf(f *flag.Flag) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return "a valid value"
	}
	switch g.Get().(type) {
	case int, int64:
		return "an integer"
	case uint, uint64:
		return "a non-negative integer"
	case float64:
		return "a number"
	case bool:
		return "true or false"
	case time.Duration:
		return "a duration such as 30s or 2m"
	}
	return "a valid value"
}

// suggest names the flag closest to key, for a misspelt config key.
func (r Rules) suggest(fs *flag.FlagSet, key string) string {
	norm := strings.ToLower(strings.ReplaceAll(key, "_", "-"))
	best, bestD := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		if r.Skip[f.Name] {
			return
		}
		if d := editDistance(norm, f.Name); d < bestD {
			best, bestD = f.Name, d
		}
	})
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Write prints fs's flags as a config file that sets each of them to its
// value now: given back to Apply, it sets the same values.
func (r Rules) Write(w io.Writer, fs *flag.FlagSet, header string) error {
	m := &yaml.Node{Kind: yaml.MappingNode}
	fs.VisitAll(func(f *flag.Flag) {
		if r.Skip[f.Name] {
			return
		}
		v := &yaml.Node{Kind: yaml.ScalarNode, Value: f.Value.String()}
		if g, ok := f.Value.(flag.Getter); ok {
			if _, str := g.Get().(string); str {
				v.Tag = "!!str" // quoted where it would read as a number, a bool or nothing
			}
		}
		if v.Value == "" && r.OmitEmpty[f.Name] {
			return
		}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: f.Name, LineComment: f.Usage}, v)
	})
	doc := &yaml.Node{Kind: yaml.DocumentNode, HeadComment: header, Content: []*yaml.Node{m}}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	return enc.Close()
}
