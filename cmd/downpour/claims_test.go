package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every row of README.md's results table names the benchmarks or tests that
// measure it (BenchmarkX, TestY), and docs/benchmarks.md gives each of those
// names on a line with a `go test` command whose -bench or -run pattern
// selects it; each name is a function of the repository's tests. A figure
// with nothing to rerun it cannot be checked, so it may not be stated.
func TestReadmeResultsNameTheirCommands(t *testing.T) {
	root := filepath.Join("..", "..")
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	bench, err := os.ReadFile(filepath.Join(root, "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	funcs := testFuncs(t, root)
	rows := resultsRows(string(readme))
	if len(rows) < 5 {
		t.Fatalf("README.md's results table has %d rows: is it still under '## Results'?", len(rows))
	}
	name := regexp.MustCompile(`\b(?:Benchmark|Test)[A-Z][A-Za-z0-9_]*`)
	for _, row := range rows {
		what := strings.TrimSpace(strings.SplitN(strings.Trim(row, "|"), "|", 2)[0])
		names := name.FindAllString(row, -1)
		if len(names) == 0 {
			t.Errorf("README.md's row %q names no benchmark or test", what)
		}
		for _, n := range names {
			if !funcs[n] {
				t.Errorf("README.md's row %q names %s, which no _test.go file defines", what, n)
			}
			if !commandRuns(string(bench), n) {
				t.Errorf("README.md's row %q names %s, which docs/benchmarks.md gives with no `go test` command that runs it", what, n)
			}
		}
	}
}

// resultsRows is the body of the first table under README.md's '## Results'.
func resultsRows(readme string) []string {
	_, after, ok := strings.Cut(readme, "\n## Results\n")
	if !ok {
		return nil
	}
	var rows []string
	inTable := false
	for _, line := range strings.Split(after, "\n") {
		if !strings.HasPrefix(line, "|") {
			if inTable {
				break
			}
			continue
		}
		inTable = true
		rows = append(rows, line)
	}
	if len(rows) < 2 {
		return nil
	}
	return rows[2:] // the header and the separator
}

// commandRuns says whether a line of doc that names n holds a `go test`
// command (in backquotes) whose -bench or -run pattern selects n, as go
// test matches it: unanchored, on the name's first element.
func commandRuns(doc, n string) bool {
	word := regexp.MustCompile(`\b` + n + `\b`)
	span := regexp.MustCompile("`(?:[A-Z_]+=[^ `]* )*(go test [^`]*)`") // after any VAR=value
	for _, line := range strings.Split(doc, "\n") {
		if !word.MatchString(line) {
			continue
		}
		for _, m := range span.FindAllStringSubmatch(line, -1) {
			args := shellFields(strings.ReplaceAll(m[1], `\|`, "|"))
			for i := 0; i+1 < len(args); i++ {
				flag := strings.TrimLeft(args[i], "-")
				if flag != "bench" && flag != "run" || !strings.HasPrefix(n, map[string]string{"bench": "Benchmark", "run": "Test"}[flag]) {
					continue
				}
				first, _, _ := strings.Cut(args[i+1], "/")
				if re, err := regexp.Compile(first); err == nil && re.MatchString(n) {
					return true
				}
			}
		}
	}
	return false
}

// shellFields splits a command into words as a shell would for the plain
// cases docs use: spaces between words, single or double quotes around one.
func shellFields(s string) []string {
	var out []string
	var cur strings.Builder
	var quote rune
	in := false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// testFuncs is the set of Test and Benchmark functions the repository's
// _test.go files define.
func testFuncs(t *testing.T, root string) map[string]bool {
	def := regexp.MustCompile(`(?m)^func ((?:Benchmark|Test)[A-Za-z0-9_]*)\(`)
	funcs := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range def.FindAllStringSubmatch(string(src), -1) {
			funcs[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return funcs
}

func TestShellFieldsAndCommandRuns(t *testing.T) {
	if got := shellFields(`go test -run NONE -bench 'SgemmStep|Sgemm$' -count 3 ./x`); strings.Join(got, ",") != "go,test,-run,NONE,-bench,SgemmStep|Sgemm$,-count,3,./x" {
		t.Fatalf("shellFields: %q", got)
	}
	doc := "| `W1` | BenchmarkW1 | `go test -run NONE -bench 'W1$' ./models` |\n" +
		"| BenchmarkW2 | `go test -run NONE -bench W1 ./models` |\n" +
		"| TestClusterFaults | `DOWNPOUR_CLUSTER_SUITE=1 go test -run '^(TestClusterFaults|TestX)$' ./deploy` |\n" +
		"| BenchmarkG1 | `go run ./cmd/downpour train` |\n"
	for n, want := range map[string]bool{"BenchmarkW1": true, "BenchmarkW2": false, "TestClusterFaults": true, "BenchmarkG1": false, "TestX": true, "TestY": false} {
		if got := commandRuns(doc, n); got != want {
			t.Errorf("commandRuns(%s) = %v, want %v", n, got, want)
		}
	}
}
