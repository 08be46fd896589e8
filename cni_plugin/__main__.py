from cni_plugin.main import main

main()
