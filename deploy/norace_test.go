//go:build !race

package deploy_test

const raceBuild = false
