package eventwire

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestSchemaMatchesTypes keeps schema/secevent.v1.json in step with the Go
// types: every event type and every details field is in the schema.
func TestSchemaMatchesTypes(t *testing.T) {
	b, err := os.ReadFile("schema/secevent.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties struct {
			Events struct {
				PropertyNames struct {
					Enum []string `json:"enum"`
				} `json:"propertyNames"`
			} `json:"events"`
		} `json:"properties"`
		Defs struct {
			Details struct {
				Properties map[string]any `json:"properties"`
				Required   []string       `json:"required"`
			} `json:"details"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	var types []string
	for typ := range subjectSuffix {
		types = append(types, typ)
	}
	slices.Sort(types)
	enum := slices.Sorted(slices.Values(schema.Properties.Events.PropertyNames.Enum))
	if !slices.Equal(types, enum) {
		t.Errorf("event types %v, schema %v", types, enum)
	}
	rt := reflect.TypeFor[EventDetails]()
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if _, ok := schema.Defs.Details.Properties[name]; !ok {
			t.Errorf("details field %q not in the schema", name)
		}
	}
}

func TestSubjects(t *testing.T) {
	for typ, want := range map[string]string{
		EventTokenRevoked:   "tally.acme.revocation.token",
		EventFamilyRevoked:  "tally.acme.revocation.family",
		EventClientDisabled: "tally.acme.security.client_disabled",
		EventKeyRotated:     "tally.acme.security.key_rotated",
		EventReuseDetected:  "tally.acme.security.reuse_detected",
		EventUserLocked:     "tally.acme.security.user_locked",
		EventUserUnlocked:   "tally.acme.security.user_unlocked",
		EventClientDeleted:  "tally.acme.security.client_deleted",
		EventUserDeleted:    "tally.acme.security.user_deleted",
		EventTenantDeleted:  "tally.acme.security.tenant_deleted",
		"https://unknown":   "",
	} {
		if got := Subject("acme", typ); got != want {
			t.Errorf("%s: %q, want %q", typ, got, want)
		}
	}
	if TenantOfSubject("tally.acme.revocation.token") != "acme" || TenantOfSubject("other.x") != "" {
		t.Error("TenantOfSubject")
	}
	if got := LiveSubject("tally.acme.revocation.token"); got != "tally.acme.live.revocation.token" {
		t.Errorf("LiveSubject: %q", got)
	}
	if LiveSubject("tally.acme") != "" {
		t.Error("LiveSubject of a short subject")
	}
}
