package policy

import "reflect"

func reflectStringSlice() reflect.Type { return reflect.TypeOf([]string{}) }
