package main

import (
	"flag"
	"fmt"
	"strings"
)

// onlyResumeFlags refuses job flags beside --resume: a resumed job keeps the
// spec it was started with.
func onlyResumeFlags(fs *flag.FlagSet) error {
	allowed := map[string]bool{"resume": true, "job": true, "nats": true, "etcd": true, "connect-timeout": true, "v": true, "out": true, "http": true, "log-format": true, "give-up": true}
	var bad []string
	fs.Visit(func(f *flag.Flag) {
		if !allowed[f.Name] {
			bad = append(bad, "--"+f.Name)
		}
	})
	if len(bad) > 0 {
		return fmt.Errorf("--resume continues the job as it was started; it cannot change %s", strings.Join(bad, ", "))
	}
	return nil
}
