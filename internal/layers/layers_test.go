package layers

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/downpour-ml/downpour"

// layer is one row of the table: its number and its packages' patterns
// (a path, or a path/... for it and every package under it).
type layer struct {
	n        int
	patterns []string
}

// readLayers reads the table of layers from docs/design.md: the rows of
// "| <n> <name> | `pkg`, `pkg/...` |" under "### Layers".
func readLayers(t *testing.T) []layer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "design.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := bytes.Cut(b, []byte("### Layers"))
	if !ok {
		t.Fatal("docs/design.md has no \"### Layers\" section")
	}
	row := regexp.MustCompile(`^\| (\d+) [^|]*\| (.*) \|$`)
	pkg := regexp.MustCompile("`([^`]+)`")
	var layers []layer
	sc := bufio.NewScanner(bytes.NewReader(table))
	for sc.Scan() {
		m := row.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		l := layer{n: n}
		for _, p := range pkg.FindAllStringSubmatch(m[2], -1) {
			l.patterns = append(l.patterns, p[1])
		}
		layers = append(layers, l)
	}
	if len(layers) < 4 {
		t.Fatalf("docs/design.md's table of layers has %d rows", len(layers))
	}
	return layers
}

// layerOf is the layer of package path (relative to the module), or -1.
func layerOf(layers []layer, path string) int {
	for _, l := range layers {
		for _, p := range l.patterns {
			if p == path || strings.HasSuffix(p, "/...") && (path == strings.TrimSuffix(p, "/...") || strings.HasPrefix(path, strings.TrimSuffix(p, "..."))) {
				return l.n
			}
		}
	}
	return -1
}

// imports is the project's import graph outside tests: package -> the
// project's packages it imports (paths relative to the module).
func imports(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", "./...")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	graph := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], module+"/") {
			continue
		}
		var deps []string
		for _, d := range f[1:] {
			if rel, ok := strings.CutPrefix(d, module+"/"); ok {
				deps = append(deps, rel)
			}
		}
		graph[strings.TrimPrefix(f[0], module+"/")] = deps
	}
	return graph
}

// check lists what breaks the layering: a package in no layer, and an
// import of a higher layer.
func check(layers []layer, graph map[string][]string) []string {
	var bad []string
	pkgs := make([]string, 0, len(graph))
	for p := range graph {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, p := range pkgs {
		lp := layerOf(layers, p)
		if lp < 0 {
			bad = append(bad, fmt.Sprintf("%s is in no layer of docs/design.md", p))
			continue
		}
		for _, d := range graph[p] {
			if ld := layerOf(layers, d); ld > lp {
				bad = append(bad, fmt.Sprintf("%s (layer %d) imports %s (layer %d)", p, lp, d, ld))
			}
		}
	}
	return bad
}

// Every package is in one layer of docs/design.md, and imports only its
// own layer and those below.
func TestLayers(t *testing.T) {
	layers := readLayers(t)
	graph := imports(t)
	if len(graph) < 20 {
		t.Fatalf("go list found %d of the project's packages", len(graph))
	}
	for _, b := range check(layers, graph) {
		t.Error(b)
	}
}

// The check fails on an arrow back up and on a package placed nowhere:
// the real graph with a role imported by the models, and with a new
// package, is refused for exactly that.
func TestLayersCatchBackArrows(t *testing.T) {
	layers := readLayers(t)
	graph := imports(t)
	graph["models"] = append(slices.Clone(graph["models"]), "coordinator")
	graph["internal/job"] = append(slices.Clone(graph["internal/job"]), "internal/app/telemetry")
	graph["newpkg"] = nil
	got := check(layers, graph)
	want := []string{
		"internal/job (layer 2) imports internal/app/telemetry (layer 4)",
		"models (layer 1) imports coordinator (layer 3)",
		"newpkg is in no layer of docs/design.md",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the check found\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Within a layer, and downward, is allowed.
	if l := layerOf(layers, "internal/kernel/vmath"); l != 0 || layerOf(layers, "internal/kernel/gemm") != 0 {
		t.Fatalf("kernel layers: %d", l)
	}
	if layerOf(layers, "cmd/downpour/internal/scale") != 5 || layerOf(layers, "internal/jobx") != -1 {
		t.Fatal("patterns: a/... matches a and what is under it, and nothing else")
	}
}
