package issuance

import (
	"net/url"
	"testing"
)

// FuzzPartiesOfForm: partiesOfForm reads the same client_id, username and
// grant_type as url.ParseQuery and Get, and fails where ParseQuery fails.
func FuzzPartiesOfForm(f *testing.F) {
	for _, s := range []string{
		"grant_type=client_credentials&scope=read",
		"client_id=a%20b&username=al+ice&grant_type=password&client_id=second",
		"client%5Fid=x&username=",
		"a=%zz&client_id=x",
		"client_id=x;y=z",
		"&&client_id=&username=u",
		"=v&grant_type",
		"%",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		id, user, grant, ok := partiesOfForm(body)
		form, err := url.ParseQuery(body)
		if (err == nil) != ok {
			t.Fatalf("%q: ok %v, ParseQuery error %v", body, ok, err)
		}
		if !ok {
			return
		}
		if id != form.Get("client_id") || user != form.Get("username") || grant != form.Get("grant_type") {
			t.Fatalf("%q: got %q %q %q, want %q %q %q", body, id, user, grant, form.Get("client_id"), form.Get("username"), form.Get("grant_type"))
		}
	})
}
