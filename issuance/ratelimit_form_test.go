package issuance

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"testing"
	"testing/iotest"
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

// FuzzBasicClientID: the limiter's client id of an Authorization header is
// the one net/http's BasicAuth and url.QueryUnescape give wherever those
// accept the header.
func FuzzBasicClientID(f *testing.F) {
	for _, s := range []string{
		"Basic " + base64.StdEncoding.EncodeToString([]byte("svc:secret")),
		"basic  " + base64.StdEncoding.EncodeToString([]byte("a%20b+c:x:y")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte("no-colon")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte(":")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte("%zz:s")),
		"Bearer abc",
		"Basic !!!!",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		got := basicClientID(header)
		r := &http.Request{Header: http.Header{"Authorization": {header}}}
		id, _, ok := r.BasicAuth()
		if !ok {
			return // a malformed header: the handler refuses it, whatever the limiter keyed
		}
		want, err := url.QueryUnescape(id)
		if err != nil || len(id) > maxCredentialLen {
			want = ""
		}
		if got != want {
			t.Fatalf("%q: got %q, want %q", header, got, want)
		}
	})
}

// FuzzSubnetKey: subnetKey writes an IPv4 /24 the way netip.Prefix does.
func FuzzSubnetKey(f *testing.F) {
	for _, s := range []string{"192.0.2.77", "10.1.2.3", "::ffff:198.51.100.9", "2001:db8::1", "255.255.255.255", "0.0.0.0", "bogus", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ip string) {
		want := ip
		if a, err := netip.ParseAddr(ip); err == nil {
			a = a.Unmap()
			bits := 24
			if a.Is6() {
				bits = 48
			}
			p, _ := a.Prefix(bits)
			want = p.String()
		}
		if got := subnetKey(ip); got != want {
			t.Fatalf("%q: got %q, want %q", ip, got, want)
		}
	})
}

// FuzzReadUpTo: readUpTo reads what io.ReadAll of an io.LimitReader reads,
// through a reader that hands out a few bytes at a time.
func FuzzReadUpTo(f *testing.F) {
	f.Add([]byte("grant_type=client_credentials"), int64(5))
	f.Add(make([]byte, 2000), int64(1025))
	f.Add([]byte{}, int64(1))
	f.Fuzz(func(t *testing.T, body []byte, limit int64) {
		if limit <= 0 || limit > 1<<20 {
			return
		}
		got, err := readUpTo(iotest.HalfReader(bytes.NewReader(body)), limit)
		want, _ := io.ReadAll(io.LimitReader(bytes.NewReader(body), limit))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("limit %d: got %d bytes (%v), want %d", limit, len(got), err, len(want))
		}
	})
}
