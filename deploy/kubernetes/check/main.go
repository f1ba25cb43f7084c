// Command check validates tally's Kubernetes manifests offline: it renders
// the base and every overlay with kustomize (as a library), decodes every
// document strictly into the k8s.io/api types (unknown fields are errors),
// checks what a tally deployment needs (stable identities, quorum-keeping
// disruption budget, probes, hardening, the network policy of the cluster
// port, consistent names and ports), and runs `tally serve --check-config`
// with each pod's arguments and environment, its secrets replaced by
// generated stand-ins at the mounted paths.
//
// It is its own Go module so that k8s.io stays out of tally's module graph:
//
//	cd deploy/kubernetes/check && go run . -tally /path/to/tally
//
// (make k8s-check builds the binary and runs this.)
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

func main() {
	dir := flag.String("dir", "..", "the deploy/kubernetes directory (base/ and overlays/*)")
	tally := flag.String("tally", "", "tally binary for --check-config (required)")
	flag.Parse()
	if *tally == "" {
		fmt.Fprintln(os.Stderr, "check: -tally is required")
		os.Exit(2)
	}
	targets, err := kustomizations(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "check:", err)
		os.Exit(2)
	}
	failed := 0
	for _, t := range targets {
		rel, _ := filepath.Rel(*dir, t)
		objs, err := render(t)
		if err == nil {
			err = checkAll(objs, rel, *tally)
		}
		if err != nil {
			fmt.Printf("FAIL %s\n%v\n", rel, err)
			failed++
			continue
		}
		fmt.Printf("ok   %s (%d objects)\n", rel, len(objs))
	}
	if failed > 0 {
		fmt.Printf("%d of %d kustomizations failed\n", failed, len(targets))
		os.Exit(1)
	}
	fmt.Printf("all %d kustomizations are valid\n", len(targets))
}

// kustomizations lists base and every overlay under dir.
func kustomizations(dir string) ([]string, error) {
	out := []string{filepath.Join(dir, "base")}
	overlays, err := filepath.Glob(filepath.Join(dir, "overlays", "*", "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(overlays)
	for _, o := range overlays {
		out = append(out, filepath.Dir(o))
	}
	if _, err := os.Stat(filepath.Join(out[0], "kustomization.yaml")); err != nil {
		return nil, err
	}
	return out, nil
}
