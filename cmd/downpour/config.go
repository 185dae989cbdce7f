package main

import (
	"sort"
	"strconv"

	"github.com/downpour-ml/downpour/internal/config"
	"github.com/downpour-ml/downpour/internal/job"
)

// configRules are the rules of the job commands' config files (--config):
// every flag but those that say what to do with a config, and the words the
// enumerated flags allow.
var configRules = config.Rules{
	Skip: map[string]bool{"config": true, "print-config": true, "resume": true},
	Choices: map[string][]string{
		"model":       {"seq2seq", "gan"},
		"mode":        {"sync", "ssp", "async"},
		"optimizer":   {"sgd", "momentum", "adagrad", "adam"},
		"lr-schedule": {"constant", "halving", "exp"},
		"non-finite":  {"refuse", "skip"},
		"tokenizer":   {"space", "13a"},
		"log-format":  {"text", "json"},
		"gan-update":  {job.Simultaneous, job.Alternating},
	},
	OmitEmpty: map[string]bool{"preset": true, "gan-update": true, "init-from": true},
}

func init() {
	var names []string
	for name := range job.Presets {
		names = append(names, name)
	}
	sort.Strings(names)
	configRules.Choices["preset"] = names
}

// formatFloat writes v so that parsing it gives v back exactly.
func formatFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
