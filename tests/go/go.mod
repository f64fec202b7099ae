module nbsnap.test/layercheck

go 1.19
