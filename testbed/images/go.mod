module testbed.local/images

go 1.25
