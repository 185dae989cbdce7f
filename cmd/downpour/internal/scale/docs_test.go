package scale

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The sweeps docs/scale.md reports are committed beside it
// (docs/scale/results/<sweep>/results.jsonl), and its tables are theirs:
// each sweep's results.md is WriteTable of its results.jsonl, and every row
// of it stands in docs/scale.md as written, but for an "of linear" the
// sweep could not compute ("-": it has no one-worker run), which the page
// may give against another sweep's run ("65% of 1x1").
func TestDocsTablesAreTheCommittedSweeps(t *testing.T) {
	root := filepath.Join("..", "..", "..", "..", "docs")
	page, err := os.ReadFile(filepath.Join(root, "scale.md"))
	if err != nil {
		t.Fatal(err)
	}
	sweeps, err := filepath.Glob(filepath.Join(root, "scale", "results", "*", "results.jsonl"))
	if err != nil || len(sweeps) < 7 {
		t.Fatalf("%d committed sweeps under docs/scale/results (%v), want the page's 7", len(sweeps), err)
	}
	filled := regexp.MustCompile(`\| [0-9]+% of 1x1 \|`)
	for _, path := range sweeps {
		rs, err := ReadResults(path)
		if err != nil {
			t.Fatal(err)
		}
		var table bytes.Buffer
		if err := WriteTable(&table, rs); err != nil {
			t.Fatal(err)
		}
		md, err := os.ReadFile(filepath.Join(filepath.Dir(path), "results.md"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(md, table.Bytes()) {
			t.Errorf("%s is not the table of its results.jsonl (downpour scale --plot %s writes it again)", filepath.Join(filepath.Dir(path), "results.md"), filepath.Dir(path))
		}
		for _, row := range strings.Split(strings.TrimSpace(table.String()), "\n")[2:] {
			if strings.Contains(string(page), row) {
				continue
			}
			found := false
			for _, line := range strings.Split(string(page), "\n") {
				found = found || strings.Contains(row, "| - |") && filled.ReplaceAllString(line, "| - |") == row
			}
			if !found {
				t.Errorf("docs/scale.md lacks the row of %s: %s", path, row)
			}
		}
	}
}

// The layout's cost model in docs/scale.md is the fit of the committed
// runs (docs/layout/results/<run>: each run of examples/paper-layout.sh's
// job.json, metrics.jsonl and roles.txt) with the committed sweeps' byte
// costs, on the 2 cores they were measured on: fit.txt beside them is
// WriteLayoutFit's report, and the page shows it.
func TestDocsLayoutFitIsTheCommittedRuns(t *testing.T) {
	root := filepath.Join("..", "..", "..", "..", "docs")
	var sweeps []string
	for _, s := range []string{"workers", "w64", "shards", "params", "params-w1"} {
		sweeps = append(sweeps, filepath.Join(root, "scale", "results", s))
	}
	runs, err := filepath.Glob(filepath.Join(root, "layout", "results", "*", "roles.txt"))
	if err != nil || len(runs) < 2 {
		t.Fatalf("%d committed layout runs (%v), want at least 2", len(runs), err)
	}
	for i := range runs {
		runs[i] = filepath.Dir(runs[i])
	}
	var got bytes.Buffer
	if err := WriteLayoutFit(&got, sweeps, runs, 2); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(root, "layout", "results", "fit.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("docs/layout/results/fit.txt is not the fit of the committed runs; it is now:\n%s", got.String())
	}
	page, err := os.ReadFile(filepath.Join(root, "scale.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(page, want) {
		t.Error("docs/scale.md does not show docs/layout/results/fit.txt as it is")
	}
}
