package revocation

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the SDK light: a resource server that imports it
// must not pull in the server's consensus, storage or NATS server code.
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/hashicorp/raft",
		"go.etcd.io/bbolt",
		"github.com/nats-io/nats-server",
		"github.com/tallyauth/tally/raft",
		"github.com/tallyauth/tally/node",
		"github.com/tallyauth/tally/issuance",
		"github.com/tallyauth/tally/replication",
	}
	// The generated events API is a leaf package (protobuf and Connect).
	allowed := "github.com/tallyauth/tally/node/api/events/v1"
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, allowed) {
			continue
		}
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("revocation depends on %s", dep)
			}
		}
	}
}
