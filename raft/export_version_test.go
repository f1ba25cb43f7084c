package raft

import "google.golang.org/protobuf/reflect/protoreflect"

// GateOpForTest gates the registered operation name on feature until the
// returned function restores the registry (tests of the propose gate; not
// for parallel tests).
func GateOpForTest(name, feature string) (restore func()) {
	n := protoreflect.Name(name)
	old := opRegistry[n]
	opRegistry[n] = old.since(feature)
	return func() { opRegistry[n] = old }
}
