package issuance_test

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"

	"github.com/tallyauth/tally/issuance"
)

func rawName(t testing.TB, rdns ...[]pkix.AttributeTypeAndValue) []byte {
	t.Helper()
	var seq pkix.RDNSequence
	for _, r := range rdns {
		seq = append(seq, pkix.RelativeDistinguishedNameSET(r))
	}
	b, err := asn1.Marshal(seq)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	oidCN    = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidO     = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidC     = asn1.ObjectIdentifier{2, 5, 4, 6}
	oidUID   = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	oidEmail = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
	oidOdd   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}
)

func atv(oid asn1.ObjectIdentifier, v any) []pkix.AttributeTypeAndValue {
	return []pkix.AttributeTypeAndValue{{Type: oid, Value: v}}
}

// TestSubjectDNMatching: tls_client_auth compares the certificate's subject
// (from its DER) with the registered RFC 4514 DN as DNs, not as strings:
// order, multi-valued RDNs, escapes, hex values, OIDs and type names,
// case and insignificant spaces.
func TestSubjectDNMatching(t *testing.T) {
	simple := rawName(t, atv(oidC, "US"), atv(oidO, "Example"), atv(oidCN, "billing"))
	comma := rawName(t, atv(oidO, "X"), atv(oidCN, "Acme, Inc. + Co"))
	multi := rawName(t, atv(oidO, "Example"), []pkix.AttributeTypeAndValue{{Type: oidCN, Value: "svc"}, {Type: oidUID, Value: "42"}})
	email := rawName(t, atv(oidCN, "x"), []pkix.AttributeTypeAndValue{{Type: oidEmail, Value: asn1.RawValue{Tag: asn1.TagIA5String, Bytes: []byte("Ops@Example.org")}}})
	spaces := rawName(t, atv(oidCN, "billing team"))
	odd := rawName(t, atv(oidOdd, 7), atv(oidCN, "n"))
	utf := rawName(t, atv(oidCN, "Zoë"))
	for _, c := range []struct {
		raw  []byte
		dn   string
		want bool
	}{
		{simple, "CN=billing,O=Example,C=US", true},
		{simple, "cn=Billing, o=EXAMPLE , c=us", true},
		{simple, "CN=billing;O=Example;C=US", true},
		{simple, "2.5.4.3=billing,OID.2.5.4.10=Example,C=US", true},
		{simple, "CN=#130762696c6c696e67,O=Example,C=US", true}, // PrintableString "billing"
		{simple, "CN=#0c0762696c6c696e67,O=Example,C=US", true}, // UTF8String "billing"
		{simple, `CN="billing",O=Example,C=US`, true},
		{simple, "C=US,O=Example,CN=billing", false}, // another order is another DN
		{simple, "CN=billing,O=Example", false},
		{simple, "CN=billing,O=Example,C=US,DC=x", false},
		{simple, "CN=bill,O=Example,C=US", false},
		{simple, "CN=billing+O=Example,C=US", false},
		{comma, `CN=Acme\, Inc. \+ Co,O=X`, true},
		{comma, `CN=Acme\2C Inc. \2B Co,O=X`, true},
		{comma, `CN=Acme, Inc. + Co,O=X`, false},
		{multi, "CN=svc+UID=42,O=Example", true},
		{multi, "UID=42+CN=svc,O=Example", true},
		{multi, "CN=svc,UID=42,O=Example", false},
		{multi, "CN=svc,O=Example", false},
		{email, "E=ops@example.org,CN=x", true},
		{email, "emailAddress=OPS@example.org,CN=x", true},
		{spaces, "CN=  billing    team ", true},
		{spaces, "CN=billingteam", false},
		{odd, "CN=n,1.3.6.1.4.1.99999.1=#020107", true},
		{odd, "CN=n,1.3.6.1.4.1.99999.1=#020108", false},
		{utf, `CN=Zo\C3\AB`, true},
		{utf, `CN=ZOË`, true},
		{simple, "", false},
		{simple, "CN", false},
		{simple, `CN=billing\zz,O=Example,C=US`, false},
		{[]byte{0x30, 0x01}, "CN=billing", false},
	} {
		if got := issuance.SubjectMatchesForTest(c.raw, c.dn); got != c.want {
			t.Errorf("%q: match %v, want %v", c.dn, got, c.want)
		}
	}
}

// TestValidateDN: the admin API refuses a DN tls_client_auth could never
// match, saying why.
func TestValidateDN(t *testing.T) {
	for _, ok := range []string{"CN=a", "CN=a,O=b", "CN=a+UID=1", "1.2.3=#0c0161", `CN=a\,b`, `CN="a,b"`} {
		if err := issuance.ValidateDN(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", " ", "CN", "XX=a", "CN=a\\", `CN=a\q`, "CN=#zz", `CN="a`, `CN="a"b`, "=a", "1=a", "01.2=a", "CN=a,,O=b"} {
		if err := issuance.ValidateDN(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzSubjectDN(f *testing.F) {
	f.Add([]byte{0x30, 0x00}, "CN=a,O=b")
	f.Add(rawName(f, atv(oidCN, "x")), `CN=#0c0178`)
	f.Fuzz(func(t *testing.T, raw []byte, dn string) {
		issuance.SubjectMatchesForTest(raw, dn) // must not panic
		_ = issuance.ValidateDN(dn)
	})
}
