package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestSIEMExportJSONLines: audit and security events reach the SIEM file
// as OCSF-aligned JSON lines with a de-duplication id and no secret.
func TestSIEMExportJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "siem.jsonl")
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) { c.SIEMFile = path }))
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc"})
	if _, err := n.Admin.DisableClient(context.Background(), connect.NewRequest(&adminv1.DisableClientRequest{Tenant: "default", ClientId: id})); err != nil {
		t.Fatal(err)
	}
	var lines []node.SIEMEvent
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) || bytes.Contains(b, []byte(n.AdminToken)) {
			t.Fatal("a secret in the SIEM export")
		}
		lines = lines[:0]
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			var e node.SIEMEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			lines = append(lines, e)
		}
		var audit, disabled bool
		for _, e := range lines {
			if e.Metadata.UID == "" || e.Time == 0 || e.TypeUID == 0 {
				t.Fatalf("incomplete line %+v", e)
			}
			audit = audit || (e.ClassUID == 6003 && e.API != nil && e.API.Operation == "DisableClient" && e.Actor.User.Name == "bootstrap-token")
			disabled = disabled || (e.ClassUID == 3001 && e.ActivityName == "Disable")
		}
		if !audit || !disabled {
			return fmt.Errorf("audit %v, client disabled %v in %d lines", audit, disabled, len(lines))
		}
		return nil
	})
	seen := map[string]bool{}
	for _, e := range lines {
		if seen[e.Metadata.UID] {
			t.Fatalf("duplicate id %s within one run", e.Metadata.UID)
		}
		seen[e.Metadata.UID] = true
		if !strings.HasPrefix(e.Metadata.UID, "tally-") {
			t.Fatalf("id %q", e.Metadata.UID)
		}
	}
}
