// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/*
 * pixeld's own implementation of the provider-facing subset of 0G's InferenceServing contract
 * (shared/spec/0g-provider-protocol.md §4–5). TEST INFRASTRUCTURE: it exists so the daemon's real
 * chain code runs against a real EVM (anvil) instead of a mock. Function signatures, struct layouts,
 * the EIP-712 domain and type, the status codes and the order of the settlement checks follow 0G's
 * contract, so the ABI in contracts-abi/ works against both.
 *
 * Differences from 0G, all on purpose:
 * - No ledger contract and no proxy: users create and fund their accounts here directly
 *   (addAccount/depositFund/requestRefund/processRefunds), and the constructor does what 0G's
 *   initialize() does.
 * - No OpenZeppelin: ownership, the reentrancy guard, the EIP-712 digest and signature recovery are
 *   written out below, so the file compiles on its own with solc-js.
 */

struct ServiceParams {
    string serviceType;
    string url;
    string model;
    string verifiability;
    uint inputPrice;
    uint outputPrice;
    string additionalInfo;
    address teeSignerAddress;
}

struct Service {
    address provider;
    string serviceType;
    string url;
    uint inputPrice;
    uint outputPrice;
    uint updatedAt;
    string model;
    string verifiability;
    string additionalInfo;
    address teeSignerAddress;
    bool teeSignerAcknowledged;
}

/// Refund slots, as in 0G: the active refunds are refunds[0 .. validRefundsLength), oldest first, and
/// pendingRefund is the sum of their amounts. Slots past validRefundsLength are spent (processed = true,
/// amount = 0) and get reused by the next requestRefund, so the array never grows past
/// MAX_REFUNDS_PER_ACCOUNT.
struct Refund {
    uint index;
    uint amount;
    uint createdAt;
    bool processed;
}

struct Account {
    address user;
    address provider;
    uint nonce;
    uint balance;
    uint pendingRefund;
    Refund[] refunds;
    string additionalInfo;
    bool acknowledged;
    uint validRefundsLength;
    uint generation;
    uint256 revokedBitmap;
}

struct TEESettlementData {
    address user;
    address provider;
    uint totalFee;
    bytes32 requestsHash;
    uint nonce;
    bytes signature;
}

enum SettlementStatus {
    SUCCESS, // 0: the whole fee was paid
    PARTIAL, // 1: the balance was short; all of it was paid, the rest is not owed on chain
    PROVIDER_MISMATCH, // 2: item.provider is not the caller, or the caller has no service
    NO_TEE_SIGNER, // 3: account or service not acknowledged, or no signer registered
    INVALID_NONCE, // 4: nonce not above the account's nonce
    INVALID_SIGNATURE // 5: bad signature, or no such account
}

contract InferenceServing {
    uint public constant MIN_LOCKTIME = 1 hours;
    uint public constant MAX_LOCKTIME = 7 days;
    uint public constant MIN_PROVIDER_STAKE = 100 ether;
    uint public constant MAX_ADDITIONAL_INFO_LENGTH = 4096;
    uint public constant MAX_SETTLEMENTS_PER_BATCH = 50;
    uint public constant MAX_PAGE_SIZE = 50;
    uint public constant MAX_BATCH_USERS = 500;
    uint public constant MAX_REFUNDS_PER_ACCOUNT = 5;

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant SETTLEMENT_TYPEHASH =
        keccak256("TEESettlement(bytes32 requestsHash,uint256 nonce,address provider,address user,uint256 totalFee)");
    bytes32 private constant DOMAIN_NAME_HASH = keccak256("0G Inference Serving");
    bytes32 private constant DOMAIN_VERSION_HASH = keccak256("1");
    /// secp256k1n / 2: a signature with a larger s is the malleable twin of a valid one (EIP-2).
    uint256 private constant SECP256K1N_HALF = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    address public owner;
    uint public lockTime;
    mapping(address provider => uint) public providerStake;

    // A service exists iff its provider field is set; an account exists iff its user field is set.
    mapping(address provider => Service) private serviceOf;
    mapping(bytes32 key => Account) private accountOf;
    /// Users of each provider in account-creation order: the order getAccountsByProvider pages through.
    mapping(address provider => address[]) private usersOf;
    uint private entered;

    event ServiceUpdated(
        address indexed service,
        string serviceType,
        string url,
        uint inputPrice,
        uint outputPrice,
        uint updatedAt,
        string model,
        string verifiability
    );
    event ServiceRemoved(address indexed service);
    event ProviderStaked(address indexed provider, uint amount);
    event ProviderStakeReturned(address indexed provider, uint amount);
    event ProviderTEESignerAcknowledged(address indexed provider, address indexed teeSignerAddress, bool acknowledged);
    event BalanceUpdated(address indexed user, address indexed provider, uint amount, uint pendingRefund);
    event RefundRequested(address indexed user, address indexed provider, uint indexed index, uint timestamp);
    event TokenRevoked(address indexed user, address indexed provider, uint8 tokenId);
    event TokensRevoked(address indexed user, address indexed provider, uint8[] tokenIds);
    event AllTokensRevoked(address indexed user, address indexed provider, uint newGeneration);
    event TEESettlementResult(address indexed user, SettlementStatus status, uint256 unsettledAmount);

    error OwnableUnauthorizedAccount(address account);
    error ReentrantCall();
    error TransferFailed();
    error LockTimeOutOfRange(uint256 lockTime, uint256 min, uint256 max);
    error InsufficientStake(uint256 provided, uint256 required);
    error CannotAddStakeWhenUpdating();
    error AdditionalInfoTooLong();
    error ServiceNotExist(address provider);
    error InvalidAddress(address addr);
    error ProviderCannotBeUser();
    error AccountExists(address user, address provider);
    error AccountNotExists(address user, address provider);
    error InsufficientBalance(address user, address provider);
    error TooManyRefunds(address user, address provider);
    error ZeroAmount();
    error CannotRevokeWithNonZeroBalance(address user, address provider, uint256 balance);
    error LimitTooLarge(uint256 limit, uint256 max);
    error BatchSizeTooLarge(uint256 size, uint256 max);
    error NoSettlementsProvided();
    error TooManySettlements(uint256 count, uint256 max);

    modifier onlyOwner() {
        if (msg.sender != owner) revert OwnableUnauthorizedAccount(msg.sender);
        _;
    }

    /// Every function that sends value holds this lock, so a receiver cannot re-enter mid-update.
    modifier nonReentrant() {
        if (entered != 0) revert ReentrantCall();
        entered = 1;
        _;
        entered = 0;
    }

    constructor(uint lockTime_) {
        // Same bounds as 0G: 0 would let a user withdraw before the provider can settle, more than a
        // week freezes user funds.
        if (lockTime_ < MIN_LOCKTIME || lockTime_ > MAX_LOCKTIME) {
            revert LockTimeOutOfRange(lockTime_, MIN_LOCKTIME, MAX_LOCKTIME);
        }
        owner = msg.sender;
        lockTime = lockTime_;
    }

    // ---------------------------------------------------------------- services

    /// First registration stakes at least MIN_PROVIDER_STAKE; updates must not send value.
    function addOrUpdateService(ServiceParams calldata params) external payable {
        if (bytes(params.additionalInfo).length > MAX_ADDITIONAL_INFO_LENGTH) revert AdditionalInfoTooLong();
        Service storage service = serviceOf[msg.sender];
        if (service.provider == address(0)) {
            if (msg.value < MIN_PROVIDER_STAKE) revert InsufficientStake(msg.value, MIN_PROVIDER_STAKE);
            providerStake[msg.sender] = msg.value;
            service.provider = msg.sender;
            emit ProviderStaked(msg.sender, msg.value);
        } else {
            if (msg.value != 0) revert CannotAddStakeWhenUpdating();
            // The owner vouched for a signer running a given model under given terms. Any change to
            // what is served or who signs voids that; a new price or url does not.
            if (_changesAttestedFields(service, params)) service.teeSignerAcknowledged = false;
        }
        service.serviceType = params.serviceType;
        service.url = params.url;
        service.inputPrice = params.inputPrice;
        service.outputPrice = params.outputPrice;
        service.updatedAt = block.timestamp;
        service.model = params.model;
        service.verifiability = params.verifiability;
        service.additionalInfo = params.additionalInfo;
        service.teeSignerAddress = params.teeSignerAddress;
        emit ServiceUpdated(
            msg.sender,
            params.serviceType,
            params.url,
            params.inputPrice,
            params.outputPrice,
            block.timestamp,
            params.model,
            params.verifiability
        );
    }

    /// Removes the caller's service and returns the stake (as 0G does).
    function removeService() external nonReentrant {
        _service(msg.sender);
        uint stake = providerStake[msg.sender];
        delete serviceOf[msg.sender];
        providerStake[msg.sender] = 0;
        emit ServiceRemoved(msg.sender);
        if (stake > 0) {
            emit ProviderStakeReturned(msg.sender, stake);
            _send(msg.sender, stake);
        }
    }

    function getService(address provider) external view returns (Service memory service) {
        service = _service(provider);
    }

    function serviceExists(address provider) public view returns (bool) {
        return serviceOf[provider].provider != address(0);
    }

    function acknowledgeTEESignerByOwner(address provider) external onlyOwner {
        Service storage service = _service(provider);
        service.teeSignerAcknowledged = true;
        emit ProviderTEESignerAcknowledged(provider, service.teeSignerAddress, true);
    }

    /// 0G's name for the owner's revocation.
    function revokeTEESignerAcknowledgement(address provider) public onlyOwner {
        Service storage service = _service(provider);
        service.teeSignerAcknowledged = false;
        emit ProviderTEESignerAcknowledged(provider, service.teeSignerAddress, false);
    }

    /// Alias named like acknowledgeTEESignerByOwner, for callers that expect the pair to match.
    function revokeTEESignerAcknowledgementByOwner(address provider) external {
        revokeTEESignerAcknowledgement(provider);
    }

    // ---------------------------------------------------------------- accounts (user side)
    // 0G routes these through its ledger contract; here the user calls them directly (msg.sender = user).

    /// Creates the caller's account with `provider`, funded with msg.value. Like 0G's, a new account
    /// starts acknowledged: funding a provider is taken as accepting its TEE signer.
    function addAccount(address provider, string calldata additionalInfo) external payable {
        if (provider == address(0)) revert InvalidAddress(provider);
        if (provider == msg.sender) revert ProviderCannotBeUser();
        Account storage account = accountOf[_accountKey(msg.sender, provider)];
        if (account.user != address(0)) revert AccountExists(msg.sender, provider);
        account.user = msg.sender;
        account.provider = provider;
        account.balance = msg.value;
        account.additionalInfo = additionalInfo;
        account.acknowledged = true;
        usersOf[provider].push(msg.sender);
        emit BalanceUpdated(msg.sender, provider, account.balance, account.pendingRefund);
    }

    /// Tops the caller's account up; re-acknowledges it, as a deposit does in 0G.
    function depositFund(address provider) external payable {
        Account storage account = _account(msg.sender, provider);
        account.balance += msg.value;
        account.acknowledged = true;
        emit BalanceUpdated(msg.sender, provider, account.balance, account.pendingRefund);
    }

    /// Withdrawing the acknowledgement is only allowed on an empty account (0G's rule): otherwise a user
    /// could spend, un-acknowledge, and make every settlement of what they spent fail.
    function acknowledgeTEESigner(address provider, bool acknowledged) external {
        Account storage account = _account(msg.sender, provider);
        if (account.acknowledged && !acknowledged && account.balance != 0) {
            revert CannotRevokeWithNonZeroBalance(msg.sender, provider, account.balance);
        }
        account.acknowledged = acknowledged;
    }

    /// Locks `amount` for withdrawal after lockTime; until then a settlement may still take it.
    function requestRefund(address provider, uint amount) external {
        Account storage account = _account(msg.sender, provider);
        if (amount == 0) revert ZeroAmount();
        if (account.balance - account.pendingRefund < amount) revert InsufficientBalance(msg.sender, provider);
        uint index = account.validRefundsLength;
        if (index >= MAX_REFUNDS_PER_ACCOUNT) revert TooManyRefunds(msg.sender, provider);
        Refund memory refund = Refund(index, amount, block.timestamp, false);
        if (account.refunds.length == index) account.refunds.push(refund);
        else account.refunds[index] = refund;
        account.validRefundsLength = index + 1;
        account.pendingRefund += amount;
        emit RefundRequested(msg.sender, provider, index, block.timestamp);
    }

    /// Pays out every refund whose lock has expired and compacts the rest to the front.
    function processRefunds(address provider) external nonReentrant returns (uint paid) {
        Account storage account = _account(msg.sender, provider);
        uint active = account.validRefundsLength;
        uint kept = 0;
        for (uint i = 0; i < active; i++) {
            Refund storage refund = account.refunds[i];
            if (block.timestamp >= refund.createdAt + lockTime) {
                paid += refund.amount;
            } else {
                if (i != kept) {
                    account.refunds[kept] = refund;
                    account.refunds[kept].index = kept;
                }
                kept++;
            }
        }
        for (uint i = kept; i < active; i++) _retireRefund(account.refunds[i]);
        account.validRefundsLength = kept;
        account.pendingRefund -= paid;
        account.balance -= paid;
        if (paid > 0) {
            emit BalanceUpdated(msg.sender, provider, account.balance, account.pendingRefund);
            _send(msg.sender, paid);
        }
    }

    /// Session-token revocation (§2): a persistent token with id `tokenId` stops being accepted.
    function revokeToken(address provider, uint8 tokenId) external {
        Account storage account = _account(msg.sender, provider);
        account.revokedBitmap |= uint256(1) << tokenId;
        emit TokenRevoked(msg.sender, provider, tokenId);
    }

    function revokeTokens(address provider, uint8[] calldata tokenIds) external {
        Account storage account = _account(msg.sender, provider);
        for (uint i = 0; i < tokenIds.length; i++) account.revokedBitmap |= uint256(1) << tokenIds[i];
        emit TokensRevoked(msg.sender, provider, tokenIds);
    }

    /// Invalidates every token issued so far: tokens carry the generation they were made for, and the
    /// bitmap is cleared because its bits refer to the old generation's token ids.
    function revokeAllTokens(address provider) external {
        Account storage account = _account(msg.sender, provider);
        account.generation += 1;
        account.revokedBitmap = 0;
        emit AllTokensRevoked(msg.sender, provider, account.generation);
    }

    // ---------------------------------------------------------------- account views

    function getAccount(address user, address provider) external view returns (Account memory) {
        return _account(user, provider);
    }

    function accountExists(address user, address provider) public view returns (bool) {
        return accountOf[_accountKey(user, provider)].user != address(0);
    }

    /// The caller's (provider's) accounts with `users`; a user without one yields an all-zero Account.
    function getBatchAccountsByUsers(address[] calldata users) external view returns (Account[] memory accounts) {
        if (users.length > MAX_BATCH_USERS) revert BatchSizeTooLarge(users.length, MAX_BATCH_USERS);
        accounts = new Account[](users.length);
        for (uint i = 0; i < users.length; i++) {
            Account storage account = accountOf[_accountKey(users[i], msg.sender)];
            if (account.user != address(0)) accounts[i] = account;
        }
    }

    /// One page of a provider's accounts in creation order. limit 0 means MAX_PAGE_SIZE (as in 0G).
    function getAccountsByProvider(
        address provider,
        uint offset,
        uint limit
    ) external view returns (Account[] memory accounts, uint total) {
        if (limit > MAX_PAGE_SIZE) revert LimitTooLarge(limit, MAX_PAGE_SIZE);
        if (limit == 0) limit = MAX_PAGE_SIZE;
        address[] storage users = usersOf[provider];
        total = users.length;
        if (offset >= total) return (new Account[](0), total);
        uint end = offset + limit > total ? total : offset + limit;
        accounts = new Account[](end - offset);
        for (uint i = offset; i < end; i++) accounts[i - offset] = accountOf[_accountKey(users[i], provider)];
    }

    // ---------------------------------------------------------------- settlement

    /// Settles each item independently: a failing item is reported (status + event), never reverts the
    /// batch. The whole payout goes to the caller in one transfer at the end.
    function settleFeesWithTEE(
        TEESettlementData[] calldata settlements
    ) external nonReentrant returns (uint8[] memory statuses) {
        _checkBatchSize(settlements.length);
        statuses = new uint8[](settlements.length);
        uint256 payout = 0;
        for (uint i = 0; i < settlements.length; i++) {
            TEESettlementData calldata item = settlements[i];
            SettlementStatus status = _check(item);
            uint256 unsettled = item.totalFee;
            if (status == SettlementStatus.SUCCESS) {
                Account storage account = accountOf[_accountKey(item.user, msg.sender)];
                // The nonce is consumed even when the balance is short: the signed item cannot be
                // replayed to collect the remainder later.
                account.nonce = item.nonce;
                uint256 paid = item.totalFee < account.balance ? item.totalFee : account.balance;
                if (paid > 0) _charge(account, paid);
                payout += paid;
                unsettled = item.totalFee - paid;
                if (unsettled > 0) status = SettlementStatus.PARTIAL;
            }
            statuses[i] = uint8(status);
            emit TEESettlementResult(item.user, status, unsettled);
        }
        if (payout > 0) _send(msg.sender, payout);
    }

    /// What settleFeesWithTEE would do, without doing it. Like 0G's, every item is judged against the
    /// current state: a user listed twice is previewed twice against the same balance and nonce.
    function previewSettlementResults(
        TEESettlementData[] calldata settlements
    )
        external
        view
        returns (
            address[] memory failedUsers,
            SettlementStatus[] memory failureReasons,
            address[] memory partialUsers,
            uint256[] memory partialAmounts
        )
    {
        _checkBatchSize(settlements.length);
        uint n = settlements.length;
        failedUsers = new address[](n);
        failureReasons = new SettlementStatus[](n);
        partialUsers = new address[](n);
        partialAmounts = new uint256[](n);
        uint failed = 0;
        uint partials = 0;
        for (uint i = 0; i < n; i++) {
            TEESettlementData calldata item = settlements[i];
            SettlementStatus status = _check(item);
            if (status != SettlementStatus.SUCCESS) {
                failedUsers[failed] = item.user;
                failureReasons[failed] = status;
                failed++;
                continue;
            }
            uint256 balance = accountOf[_accountKey(item.user, msg.sender)].balance;
            if (item.totalFee > balance) {
                partialUsers[partials] = item.user;
                partialAmounts[partials] = item.totalFee - balance;
                partials++;
            }
        }
        // Trim the arrays to what was filled: a memory array's length is its first word.
        assembly {
            mstore(failedUsers, failed)
            mstore(failureReasons, failed)
            mstore(partialUsers, partials)
            mstore(partialAmounts, partials)
        }
    }

    /// EIP-712 domain separator, computed per call so it stays right if the chain id changes (fork).
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, DOMAIN_NAME_HASH, DOMAIN_VERSION_HASH, block.chainid, address(this)));
    }

    // ---------------------------------------------------------------- internals

    /// The checks of one item, in 0G's order. SUCCESS here means "valid, pay what the balance allows".
    function _check(TEESettlementData calldata item) private view returns (SettlementStatus) {
        // Accounts are looked up under msg.sender, so an item for another provider can never touch
        // (or even probe) that provider's accounts.
        if (item.provider != msg.sender) return SettlementStatus.PROVIDER_MISMATCH;
        Account storage account = accountOf[_accountKey(item.user, msg.sender)];
        // 0G reports a missing account as a bad signature rather than reverting the whole batch.
        if (account.user == address(0)) return SettlementStatus.INVALID_SIGNATURE;
        Service storage service = serviceOf[msg.sender];
        if (service.provider == address(0)) return SettlementStatus.PROVIDER_MISMATCH;
        if (!account.acknowledged || !service.teeSignerAcknowledged || service.teeSignerAddress == address(0)) {
            return SettlementStatus.NO_TEE_SIGNER;
        }
        if (item.nonce <= account.nonce) return SettlementStatus.INVALID_NONCE;
        // _recover yields address(0) for a malformed signature; teeSignerAddress is non-zero here.
        if (_recover(_settlementDigest(item), item.signature) != service.teeSignerAddress) {
            return SettlementStatus.INVALID_SIGNATURE;
        }
        return SettlementStatus.SUCCESS;
    }

    /// EIP-712 digest of the item: no personal_sign prefix, the TEE key signs this directly.
    function _settlementDigest(TEESettlementData calldata item) private view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(SETTLEMENT_TYPEHASH, item.requestsHash, item.nonce, item.provider, item.user, item.totalFee)
        );
        return keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), structHash));
    }

    /// ecrecover over a 65-byte r‖s‖v signature, refusing what OpenZeppelin's ECDSA.tryRecover refuses:
    /// other lengths, high s (the malleable twin of a valid signature) and v outside {27, 28}.
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address) {
        if (signature.length != 65) return address(0);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > SECP256K1N_HALF) return address(0);
        if (v != 27 && v != 28) return address(0);
        return ecrecover(digest, v, r, s);
    }

    /// Takes `amount` (≤ balance) from the account. What the free balance cannot cover comes out of
    /// pending refunds, newest first: the provider was owed it before the user asked for it back.
    function _charge(Account storage account, uint256 amount) private {
        uint256 free = account.balance - account.pendingRefund;
        if (amount > free) {
            uint256 toCancel = amount - free;
            uint256 remaining = toCancel;
            uint256 active = account.validRefundsLength;
            // pendingRefund is the sum of the active refunds and toCancel ≤ pendingRefund, so this
            // ends with remaining == 0.
            while (remaining > 0) {
                Refund storage refund = account.refunds[active - 1];
                if (refund.amount <= remaining) {
                    remaining -= refund.amount;
                    _retireRefund(refund);
                    active--;
                } else {
                    refund.amount -= remaining;
                    remaining = 0;
                }
            }
            account.validRefundsLength = active;
            account.pendingRefund -= toCancel;
        }
        account.balance -= amount;
        emit BalanceUpdated(account.user, account.provider, account.balance, account.pendingRefund);
    }

    function _retireRefund(Refund storage refund) private {
        refund.amount = 0;
        refund.processed = true;
    }

    function _checkBatchSize(uint count) private pure {
        if (count == 0) revert NoSettlementsProvided();
        if (count > MAX_SETTLEMENTS_PER_BATCH) revert TooManySettlements(count, MAX_SETTLEMENTS_PER_BATCH);
    }

    function _changesAttestedFields(Service storage s, ServiceParams calldata p) private view returns (bool) {
        return
            !_same(s.serviceType, p.serviceType) ||
            !_same(s.model, p.model) ||
            !_same(s.verifiability, p.verifiability) ||
            !_same(s.additionalInfo, p.additionalInfo) ||
            s.teeSignerAddress != p.teeSignerAddress;
    }

    function _same(string storage a, string calldata b) private pure returns (bool) {
        return keccak256(bytes(a)) == keccak256(bytes(b));
    }

    function _service(address provider) private view returns (Service storage service) {
        service = serviceOf[provider];
        if (service.provider == address(0)) revert ServiceNotExist(provider);
    }

    function _account(address user, address provider) private view returns (Account storage account) {
        account = accountOf[_accountKey(user, provider)];
        if (account.user == address(0)) revert AccountNotExists(user, provider);
    }

    function _accountKey(address user, address provider) private pure returns (bytes32) {
        return keccak256(abi.encode(user, provider));
    }

    function _send(address to, uint256 amount) private {
        (bool ok, ) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
