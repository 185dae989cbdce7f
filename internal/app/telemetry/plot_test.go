package telemetry

import (
	"errors"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/testenv"
	"gonum.org/v1/plot/plotutil"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Records come back sorted by step, a step recorded twice (a rollback ran
// it again) keeping its last record; a line that is not a record is an error
// naming the line.
func TestReadMetrics(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "m.jsonl", `{"kind":"train","step":9,"loss":2}
{"kind":"train","step":19,"loss":1.5}
{"kind":"eval","step":20,"bleu":10}
{"kind":"train","step":9,"loss":1.9}
{"kind":"train","step":4,"loss":3}
`)
	rs, es, err := ReadMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || rs[0].Step != 4 || rs[1].Step != 9 || rs[1].Loss != 1.9 || rs[2].Step != 19 || len(es) != 1 || es[0].BLEU != 10 {
		t.Fatalf("records %+v, evals %+v", rs, es)
	}
	for body, want := range map[string]string{
		"{\"kind\":\"train\",\"step\":1}\nnot json\n":     "m.jsonl:2:",
		"{\"kind\":\"weird\"}\n":                          `kind "weird"`,
		"{\"kind\":\"eval\",\"step\":-5}\n":               "step -5",
		"{\"kind\":\"train\",\"step\":\"one\"}\n":         "m.jsonl:1:",
		"{\"kind\":\"eval\",\"step\":1,\"bleu\":\"x\"}\n": "m.jsonl:1:",
	} {
		if _, _, err := ReadMetrics(writeFile(t, dir, "m.jsonl", body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %q", body, err, want)
		}
	}
}

// pngInk decodes a PNG and counts its pixels that are not white.
func pngInk(t *testing.T, path string) (w, h, ink int) {
	t.Helper()
	img := testenv.PNG(t, path)
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if r, g, bl, _ := img.At(x, y).RGBA(); r&g&bl < 0xf000 {
				ink++
			}
		}
	}
	return b.Dx(), b.Dy(), ink
}

// Curves draws loss.png and, once there are evaluations, eval.png: for a
// Seq2Seq run and for a GAN run (whose evaluations are Parzen estimates).
func TestCurves(t *testing.T) {
	for name, body := range map[string]string{
		"seq2seq": `{"kind":"train","step":9,"loss":2.5}
{"kind":"train","step":19,"loss":1.5}
{"kind":"eval","step":20,"eval_loss":1.7,"bleu":12,"exact_match":0.1}
{"kind":"train","step":29,"loss":0.9}
{"kind":"eval","step":30,"eval_loss":1.1,"bleu":40,"exact_match":0.3}
`,
		"gan": `{"kind":"train","step":249,"loss":0.6,"g_loss":1.2}
{"kind":"train","step":499,"loss":0.5,"g_loss":1.9}
{"kind":"eval","step":250,"parzen":-80,"parzen_se":3,"samples":1000}
{"kind":"eval","step":500,"parzen":-20,"parzen_se":4,"samples":1000}
`,
	} {
		dir := t.TempDir()
		if err := Curves(writeFile(t, dir, "metrics.jsonl", body), dir, 250); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, f := range []string{"loss.png", "eval.png"} {
			w, h, ink := pngInk(t, filepath.Join(dir, f))
			if w < 400 || h < 200 || ink < 1000 || ink > w*h/2 {
				t.Fatalf("%s %s: %dx%d with %d inked pixels", name, f, w, h, ink)
			}
		}
	}
	// Training records only: no eval.png yet. Nothing at all: an error.
	dir := t.TempDir()
	if err := Curves(writeFile(t, dir, "metrics.jsonl", `{"kind":"train","step":0,"loss":1}`+"\n"), dir, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "eval.png")); err == nil {
		t.Fatal("eval.png without evaluations")
	}
	if err := Curves(writeFile(t, dir, "metrics.jsonl", ""), dir, 0); !errors.Is(err, ErrNoRecords) {
		t.Fatalf("empty metrics: %v", err)
	}
}

// The training loss and the held-out loss are drawn in two colours (they
// were once both in the first).
func TestCurvesHeldOutColour(t *testing.T) {
	dir := t.TempDir()
	body := `{"kind":"train","step":10,"loss":2.5}
{"kind":"eval","step":10,"eval_loss":2.7}
{"kind":"train","step":20,"loss":1.5}
{"kind":"eval","step":20,"eval_loss":1.9}
{"kind":"train","step":30,"loss":0.9}
{"kind":"eval","step":30,"eval_loss":1.2}
`
	if err := Curves(writeFile(t, dir, "metrics.jsonl", body), dir, 0); err != nil {
		t.Fatal(err)
	}
	train, held := inkOf(t, filepath.Join(dir, "loss.png"), plotutil.Color(0)), inkOf(t, filepath.Join(dir, "loss.png"), plotutil.Color(1))
	if train < 100 || held < 100 {
		t.Fatalf("%d pixels in the training loss's colour, %d in the held-out loss's", train, held)
	}
}

// inkOf counts the pixels of path within 24 of c in every channel.
func inkOf(t *testing.T, path string, c color.Color) int {
	near := func(a, b uint32) bool { return a>>8 <= b>>8+24 && b>>8 <= a>>8+24 }
	cr, cg, cb, _ := c.RGBA()
	return countPixels(t, path, func(r, g, b uint32) bool { return near(r, cr) && near(g, cg) && near(b, cb) })
}

// blueInk counts the pixels of path drawn in the paper line's blue.
func blueInk(t *testing.T, path string) int {
	return countPixels(t, path, func(r, g, b uint32) bool { return b > 0xc000 && r < 0x3000 && g < 0x3000 })
}

// countPixels counts the pixels of the PNG at path whose colour is.
func countPixels(t *testing.T, path string, is func(r, g, b uint32) bool) int {
	t.Helper()
	img := testenv.PNG(t, path)
	n := 0
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			if r, g, b, _ := img.At(x, y).RGBA(); is(r, g, b) {
				n++
			}
		}
	}
	return n
}

// The paper's full estimates (on the test set) are drawn beside the paper's
// 225, in blue; the during-training monitor (validation) is not.
func TestCurvesPaperLine(t *testing.T) {
	for _, set := range []string{"test", "validation"} {
		dir := t.TempDir()
		body := fmt.Sprintf(`{"kind":"eval","step":12500,"parzen":180,"parzen_se":2,"samples":10000,"set":%q}
{"kind":"eval","step":25000,"parzen":230,"parzen_se":2,"samples":10000,"set":%q}
`, set, set)
		if err := Curves(writeFile(t, dir, "metrics.jsonl", body), dir, 500); err != nil {
			t.Fatal(err)
		}
		blue := blueInk(t, filepath.Join(dir, "eval.png"))
		if set == "test" && blue < 200 || set != "test" && blue != 0 {
			t.Fatalf("%s: %d blue pixels", set, blue)
		}
	}
}

// No metrics file makes ReadMetrics or Curves panic.
func FuzzReadMetrics(f *testing.F) {
	f.Add([]byte(`{"kind":"train","step":9,"loss":2}` + "\n" + `{"kind":"eval","step":10,"parzen":-3,"samples":10}` + "\n"))
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"kind":"eval","step":-9223372036854775808}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "metrics.jsonl")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ReadMetrics(path); err != nil {
			return
		}
		Curves(path, dir, 0) // may fail (no records), must not panic
	})
}
