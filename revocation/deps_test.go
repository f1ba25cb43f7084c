package revocation

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the SDK light: a resource server that imports it
// must not pull in the server's consensus, storage or NATS server code, nor
// any package of the tally server. The event wire contract the SDK shares
// with the server (revocation/eventwire) imports nothing of tally either.
func TestDependencies(t *testing.T) {
	forbidden := []string{
		"github.com/hashicorp/raft",
		"go.etcd.io/bbolt",
		"github.com/nats-io/nats-server",
		"github.com/tallyauth/tally/raft",
		"github.com/tallyauth/tally/node",
		"github.com/tallyauth/tally/issuance",
		"github.com/tallyauth/tally/replication",
		"github.com/tallyauth/tally/loadtest",
		"github.com/tallyauth/tally/cmd",
	}
	for _, pkg := range []string{".", "./eventwire/..."} {
		for _, dep := range goListDeps(t, pkg) {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
	// The wire contract is a leaf: nothing of tally but itself.
	for _, dep := range goListDeps(t, "./eventwire/...") {
		if strings.HasPrefix(dep, "github.com/tallyauth/tally/") && !strings.HasPrefix(dep, "github.com/tallyauth/tally/revocation/eventwire") {
			t.Errorf("eventwire depends on %s", dep)
		}
	}
}

// TestServerUsesWireContract: the server packages that publish and serve
// events take the wire contract from eventwire, not from the SDK.
func TestServerUsesWireContract(t *testing.T) {
	for _, pkg := range []string{"../replication", "../node"} {
		out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		imports := strings.Fields(string(out))
		var wire bool
		for _, imp := range imports {
			if imp == "github.com/tallyauth/tally/revocation" {
				t.Errorf("%s imports the SDK (github.com/tallyauth/tally/revocation); take the wire contract from revocation/eventwire", pkg)
			}
			wire = wire || strings.HasPrefix(imp, "github.com/tallyauth/tally/revocation/eventwire")
		}
		if !wire {
			t.Errorf("%s does not import revocation/eventwire", pkg)
		}
	}
}

func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 5 {
		t.Fatalf("go list -deps %s listed only %d packages: %s", pkg, len(deps), out)
	}
	return deps
}
