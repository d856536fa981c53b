print("gw")
