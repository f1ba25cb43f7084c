package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// tallyBin builds the tally binary of this checkout once.
func tallyBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TALLY_BIN"); p != "" {
		return p
	}
	out := filepath.Join(t.TempDir(), "tally")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/tally")
	cmd.Dir = filepath.Join("..", "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building tally: %v\n%s", err, b)
	}
	return out
}

// copyTree copies deploy/kubernetes (base and overlays) to a temporary
// directory and applies edit to one file: old must occur in it.
func copyTree(t *testing.T, file, old, new string) string {
	t.Helper()
	dst := t.TempDir()
	for _, sub := range []string{"base", "overlays"} {
		err := filepath.Walk(filepath.Join("..", sub), func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel("..", p)
			if fi.IsDir() {
				return os.MkdirAll(filepath.Join(dst, rel), 0o755)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if rel == file {
				if !strings.Contains(string(b), old) {
					t.Fatalf("%s does not contain %q", file, old)
				}
				b = []byte(strings.Replace(string(b), old, new, 1))
			}
			return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func run(t *testing.T, dir, tally string) error {
	t.Helper()
	targets, err := kustomizations(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range targets {
		objs, err := render(k)
		if err == nil {
			err = checkAll(objs, k, tally)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// TestShippedManifests: the manifests as shipped pass every check.
func TestShippedManifests(t *testing.T) {
	if err := run(t, "..", tallyBin(t)); err != nil {
		t.Fatal(err)
	}
}

// TestRejects: each mistake is caught, with a message that names it.
func TestRejects(t *testing.T) {
	tally := tallyBin(t)
	for _, tc := range []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "base/statefulset.yaml", "  serviceName: tally-cluster", "  serviceName: tally-cluster\n  replica: 3", "unknown field"},
		{"PDB below quorum", "base/poddisruptionbudget.yaml", "maxUnavailable: 1", "maxUnavailable: 2", "maxUnavailable 1"},
		{"cluster port open to all", "base/networkpolicy.yaml", "        - port: nats\n", "        - port: cluster\n        - port: nats\n", "opens the cluster port to everyone"},
		{"readiness on healthz", "base/statefulset.yaml", "path: /readyz", "path: /healthz", "readiness probe path"},
		{"writable root", "base/statefulset.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"},
		{"flag tally does not know", "base/statefulset.yaml", "- --raft-profile=lan", "- --raft-profil=lan", "flag provided but not defined"},
		{"bad flag value", "base/statefulset.yaml", "- --raft-profile=lan", "- --raft-profile=moon", "--check-config"},
		{"secret key tally does not read", "base/statefulset.yaml", "- key: kek\n", "- key: kek-v2\n", "not one tally reads"},
		{"node id not the pod name", "base/statefulset.yaml", "fieldPath: metadata.name", "fieldPath: metadata.uid", "TALLY_NODE_ID"},
		{"misspelt setting", "base/statefulset.yaml", "- name: TALLY_LOG_LEVEL", "- name: TALLY_LOGLEVEL", "not a setting of tally serve"},
		{"no zone spread", "overlays/three-zones/zones.yaml", "topology.kubernetes.io/zone", "topology.kubernetes.io/region", "spread the pods over zones"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t, copyTree(t, tc.file, tc.old, tc.new), tally)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
