package issuance_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoHeavyDeps keeps issuance (and its test fake) free of Raft, bbolt and
// NATS: it must compile against a narrow read interface, and the node wires
// it to the replica (DESIGN.md, "Packages").
func TestNoHeavyDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	banned := []string{
		"github.com/hashicorp/raft",
		"go.etcd.io/bbolt",
		"github.com/nats-io",
		"github.com/tallyauth/tally/raft",
	}
	for _, pkg := range []string{".", "./issuancetest"} {
		out, err := exec.Command(goTool, "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s listed only %d packages: %s", pkg, len(deps), out)
		}
		for _, dep := range deps {
			for _, b := range banned {
				if strings.HasPrefix(dep, b) {
					t.Errorf("%s imports %s (banned: %s)", pkg, dep, b)
				}
			}
		}
	}
}
