// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {StockToken} from "./StockToken.sol";

/// @title BroncoVault: USDT in, stock tokens out, and back.
/// @notice Users deposit USDT naming a listed symbol, or redeem stock tokens. The off-chain
/// operator buys or sells the shares at the broker and settles each deposit and redeem id
/// exactly once: the contract itself refuses a second settlement (AlreadySettled), so a
/// retried settlement transaction can never pay twice. A refund never exceeds the deposit.
/// Before its settlement, an operator may refund part or all of a deposit manually
/// (refundDeposit), at most once per refund id; manual refunds plus the settlement's refund
/// never exceed the deposit either.
///
/// Ids survive re-mining: a deposit or redeem id is a hash of what the request is (chain,
/// vault, kind, user, the user's request nonce, symbol, amount), never of the order in which
/// requests are mined. A reorg that re-mines a user's requests (in their own nonce order)
/// gives them the same ids; a request that vanished leaves its id empty, never another
/// request's. Every settlement names what it settles (user, symbol, amount) and the vault
/// refuses one whose record differs (DepositMismatch / RedeemMismatch), so an operator whose
/// view of the chain is stale can never pay another user's trade.
///
/// Batched settlement (settleDeposits / settleRedeems) carries the same checks per element;
/// an id already settled is skipped with SettlementSkipped (a retried batch pays nothing
/// twice and does not fail), any other invalid element reverts the whole batch.
/// User order terms: `deposit(symbol, usdtAmount, maxPricePerShare, expiry)` and
/// `redeem(symbol, shares, minPricePerShare, expiry)` (0 = no bound / the default expiry);
/// the two-argument calls are market orders with the default expiry. The terms are part of
/// the request id (a request with terms hashes them too), so ids stay what the request is.
/// A settlement carries its fee; the vault refuses one whose implied price per share (USDT
/// spent less fee, over shares minted; for a redeem USDT paid plus fee over shares sold)
/// breaks the user's bound (PriceAboveBound / PriceBelowBound), whose fee is above the
/// published schedule (FeeAboveSchedule: `quoteFee` of the deposit amount, of the gross
/// proceeds for a redeem; percent in parts per million plus a flat USDT fee, set by the
/// admin with FeeScheduleSet), or, after the expiry, anything but a full refund or return
/// (SettlementAfterExpiry). Redeems can be cancelled like deposits (requestRedeemCancel).
///
/// Pause stops new deposits and redeems; cancel requests and settlement keep working so
/// that in-flight orders can always complete.
contract BroncoVault is AccessControl, Pausable {
    using SafeERC20 for IERC20;

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    uint8 public constant KIND_DEPOSIT = 1;
    uint8 public constant KIND_REDEEM = 2;
    /// @notice Token base units per whole share (stock tokens have 18 decimals).
    uint256 public constant SHARE = 1e18;
    /// @notice Fee rates are in parts per million of the amount (1000 = 0.1 %).
    uint256 public constant FEE_RATE_SCALE = 1e6;
    /// @notice The longest expiry a request may name or the admin may set as the default.
    uint256 public constant MAX_EXPIRY = 30 days;

    /// @notice A request's terms: its price bound (USDT base units per whole share; 0 = none)
    /// and when it expires (unix seconds).
    struct Terms {
        uint256 priceBound;
        uint256 expiry;
    }

    struct DepositInfo {
        address user;
        bytes32 symbol;
        uint256 usdtAmount;
        bool cancelRequested;
        bool settled;
    }

    struct RedeemInfo {
        address user;
        bytes32 symbol;
        uint256 shares;
        bool settled;
    }

    /// @notice One element of settleDeposits: the deposit as the operator believes it is
    /// (id, user, symbol, usdtAmount), what it pays (sharesToMint, usdtRefund), and the
    /// cycle that filled it at `pricePerShare` (USDT base units per whole share) for `fee`
    /// (USDT base units).
    struct DepositSettlement {
        uint256 depositId;
        address user;
        bytes32 symbol;
        uint256 usdtAmount;
        uint256 sharesToMint;
        uint256 usdtRefund;
        uint256 cycleId;
        uint256 pricePerShare;
        uint256 fee;
    }

    /// @notice One element of settleRedeems, as DepositSettlement for a redeem.
    struct RedeemSettlement {
        uint256 redeemId;
        address user;
        bytes32 symbol;
        uint256 shares;
        uint256 usdtPaid;
        uint256 sharesReturned;
        uint256 cycleId;
        uint256 pricePerShare;
        uint256 fee;
    }

    IERC20 public immutable usdt;

    /// @notice Requests (deposits and redeems) made by each user so far: the next request's
    /// nonce. A zero user in `deposits(id)` means "no such deposit".
    mapping(address => uint256) public nonces;

    mapping(uint256 => DepositInfo) public deposits;
    mapping(uint256 => RedeemInfo) public redeems;
    /// @notice USDT refunded manually (refundDeposit) per deposit, before its settlement.
    mapping(uint256 => uint256) public refundedOf;
    /// @notice Refund ids already paid: each pays at most once.
    mapping(uint256 => bool) public refundIdUsed;
    /// @notice Each deposit's terms: the highest price per share it accepts, its expiry.
    mapping(uint256 => Terms) public depositTerms;
    /// @notice Each redeem's terms: the lowest price per share it accepts, its expiry.
    mapping(uint256 => Terms) public redeemTerms;
    mapping(uint256 => bool) public redeemCancelRequested;
    /// @notice The published fee schedule: `feeRatePpm` of the amount (rounded up) plus
    /// `feeFlat` USDT base units per request.
    uint256 public feeRatePpm;
    uint256 public feeFlat;
    /// @notice The expiry of a request that names none: this long after it is made.
    uint256 public defaultExpiry = 7 days;
    mapping(bytes32 => StockToken) public tokenOf;
    mapping(bytes32 => bool) public isListed;
    bytes32[] private _symbols;

    event Deposit(
        uint256 indexed depositId, address indexed user, bytes32 indexed symbol, uint256 usdtAmount
    );
    event CancelRequested(uint256 indexed depositId, address indexed user);
    event Redeem(
        uint256 indexed redeemId, address indexed user, bytes32 indexed symbol, uint256 shares
    );
    event DepositSettled(
        uint256 indexed depositId, address indexed user, uint256 sharesMinted, uint256 usdtRefunded
    );
    event RedeemSettled(
        uint256 indexed redeemId, address indexed user, uint256 usdtPaid, uint256 sharesReturned
    );
    event DepositRefunded(
        uint256 indexed depositId, uint256 indexed refundId, address indexed user, uint256 amount
    );
    /// @notice A batched deposit settlement: the cycle, price and fee it settled at.
    event DepositFilled(
        uint256 indexed depositId, uint256 indexed cycleId, uint256 pricePerShare, uint256 fee
    );
    /// @notice A batched redeem settlement: the cycle, price and fee it settled at.
    event RedeemFilled(
        uint256 indexed redeemId, uint256 indexed cycleId, uint256 pricePerShare, uint256 fee
    );
    /// @notice A batch element whose id was already settled: nothing paid, the batch goes on.
    event SettlementSkipped(uint8 indexed kind, uint256 indexed id);
    /// @notice A deposit's terms, right after its Deposit event, when the user named any (a
    /// market order with the default expiry emits none: `depositTerms(id)` still holds it).
    event DepositTerms(uint256 indexed depositId, uint256 maxPricePerShare, uint256 expiry);
    /// @notice A redeem's terms, right after its Redeem event, when the user named any.
    event RedeemTerms(uint256 indexed redeemId, uint256 minPricePerShare, uint256 expiry);
    event RedeemCancelRequested(uint256 indexed redeemId, address indexed user);
    event FeeScheduleSet(uint256 feeRatePpm, uint256 feeFlat);
    event DefaultExpirySet(uint256 defaultExpiry);
    event SymbolListed(bytes32 indexed symbol, address token);
    event SymbolUnlisted(bytes32 indexed symbol);
    event ReserveWithdrawn(address indexed to, uint256 amount);

    error ZeroAmount();
    error ZeroAddress();
    error EmptyBatch();
    error SymbolNotListed(bytes32 symbol);
    error SymbolAlreadyListed(bytes32 symbol);
    error UnknownDeposit(uint256 depositId);
    error UnknownRedeem(uint256 redeemId);
    error NotDepositor(uint256 depositId, address caller);
    error CancelAlreadyRequested(uint256 depositId);
    error AlreadySettled(uint256 id);
    error RefundAboveDeposit(uint256 depositId, uint256 refund, uint256 deposited);
    error RefundIdUsed(uint256 refundId);
    /// @notice The deposit at `depositId` is not the one the operator named.
    error DepositMismatch(
        uint256 depositId,
        address expectedUser,
        bytes32 expectedSymbol,
        uint256 expectedAmount,
        address actualUser,
        bytes32 actualSymbol,
        uint256 actualAmount
    );
    /// @notice The redeem at `redeemId` is not the one the operator named.
    error RedeemMismatch(
        uint256 redeemId,
        address expectedUser,
        bytes32 expectedSymbol,
        uint256 expectedShares,
        address actualUser,
        bytes32 actualSymbol,
        uint256 actualShares
    );
    /// @notice Cost at the batch price plus fee plus refunds exceed the deposit.
    error ChargeAboveDeposit(uint256 depositId, uint256 charged, uint256 deposited);
    /// @notice More shares returned than the redeem burned.
    error ReturnAboveRedeem(uint256 redeemId, uint256 returned, uint256 shares);
    /// @notice Payout plus fee exceed the proceeds of the shares sold at the batch price.
    error PayoutAboveProceeds(uint256 redeemId, uint256 paidWithFee, uint256 proceeds);
    /// @notice The deposit's implied price per share is above the user's bound.
    error PriceAboveBound(uint256 depositId, uint256 impliedPrice, uint256 maxPricePerShare);
    /// @notice The redeem's implied price per share is below the user's bound.
    error PriceBelowBound(uint256 redeemId, uint256 impliedPrice, uint256 minPricePerShare);
    /// @notice The fee is above the published schedule for the amount.
    error FeeAboveSchedule(uint256 id, uint256 fee, uint256 maxFee);
    /// @notice After its expiry a request settles only as a full refund (return).
    error SettlementAfterExpiry(uint256 id, uint256 expiry, uint256 traded);
    /// @notice The expiry is in the past or further than MAX_EXPIRY ahead.
    error ExpiryOutOfRange(uint256 expiry, uint256 latest);
    error FeeRateTooHigh(uint256 feeRatePpm);
    error UnknownRedeemCancel(uint256 redeemId);
    error NotRedeemer(uint256 redeemId, address caller);

    constructor(IERC20 usdt_, address admin, address operator) {
        if (address(usdt_) == address(0) || admin == address(0)) revert ZeroAddress();
        usdt = usdt_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        if (operator != address(0)) _grantRole(OPERATOR_ROLE, operator);
    }

    // --- listing and pause (admin) ---------------------------------------------------------

    /// @notice Lists a symbol, creating its stock token on first listing. Listing again after
    /// unlisting reuses the same token.
    function listSymbol(bytes32 symbol, string calldata name, string calldata ticker)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
        returns (StockToken token)
    {
        if (isListed[symbol]) revert SymbolAlreadyListed(symbol);
        token = tokenOf[symbol];
        if (address(token) == address(0)) {
            token = new StockToken(name, ticker, symbol, address(this));
            tokenOf[symbol] = token;
            _symbols.push(symbol);
        }
        isListed[symbol] = true;
        emit SymbolListed(symbol, address(token));
    }

    /// @notice Stops new deposits for a symbol; holders can still redeem.
    function unlistSymbol(bytes32 symbol) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (!isListed[symbol]) revert SymbolNotListed(symbol);
        isListed[symbol] = false;
        emit SymbolUnlisted(symbol);
    }

    function symbols() external view returns (bytes32[] memory) {
        return _symbols;
    }

    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    /// @notice Moves reserve USDT out (to the broker account's funding wallet).
    function withdrawReserve(address to, uint256 amount) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (to == address(0)) revert ZeroAddress();
        usdt.safeTransfer(to, amount);
        emit ReserveWithdrawn(to, amount);
    }

    // --- fee schedule and expiry (admin) ----------------------------------------------------

    /// @notice Publishes the fee schedule: `ratePpm` parts per million of the amount (at most
    /// 10 %) plus `flat` USDT base units.
    function setFeeSchedule(uint256 ratePpm, uint256 flat) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (ratePpm > FEE_RATE_SCALE / 10) revert FeeRateTooHigh(ratePpm);
        feeRatePpm = ratePpm;
        feeFlat = flat;
        emit FeeScheduleSet(ratePpm, flat);
    }

    /// @notice Sets the expiry of requests that name none (seconds; at most MAX_EXPIRY).
    function setDefaultExpiry(uint256 seconds_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (seconds_ == 0 || seconds_ > MAX_EXPIRY) {
            revert ExpiryOutOfRange(seconds_, MAX_EXPIRY);
        }
        defaultExpiry = seconds_;
        emit DefaultExpirySet(seconds_);
    }

    /// @notice The most fee a request of `amount` USDT base units pays under the current
    /// schedule: ceil(amount * feeRatePpm / 1e6) + feeFlat (0 for a zero amount).
    function quoteFee(uint256 amount) public view returns (uint256) {
        if (amount == 0) return 0;
        return (amount * feeRatePpm + FEE_RATE_SCALE - 1) / FEE_RATE_SCALE + feeFlat;
    }

    // --- ids -------------------------------------------------------------------------------

    /// @notice The id of a request: what it is, never when it was mined.
    function requestId(
        uint8 kind,
        address user,
        uint256 userNonce,
        bytes32 symbol,
        uint256 amount
    ) public view returns (uint256) {
        return uint256(
            keccak256(abi.encode(block.chainid, address(this), kind, user, userNonce, symbol, amount))
        );
    }

    /// @notice The id of a request with terms: as requestId, with the terms hashed too (a
    /// request without terms, both 0, has its requestId).
    function requestIdWithTerms(
        uint8 kind,
        address user,
        uint256 userNonce,
        bytes32 symbol,
        uint256 amount,
        uint256 priceBound,
        uint256 expiry
    ) public view returns (uint256) {
        if (priceBound == 0 && expiry == 0) {
            return requestId(kind, user, userNonce, symbol, amount);
        }
        return uint256(
            keccak256(
                abi.encode(
                    block.chainid, address(this), kind, user, userNonce, symbol, amount, priceBound, expiry
                )
            )
        );
    }

    // --- users -----------------------------------------------------------------------------

    /// @notice A market deposit with the default expiry.
    function deposit(bytes32 symbol, uint256 usdtAmount)
        external
        whenNotPaused
        returns (uint256 depositId)
    {
        return _deposit(symbol, usdtAmount, 0, 0);
    }

    /// @notice A deposit that buys at no more than `maxPricePerShare` (USDT base units per
    /// whole share; 0 = no bound) until `expiry` (unix seconds; 0 = the default expiry).
    function deposit(bytes32 symbol, uint256 usdtAmount, uint256 maxPricePerShare, uint256 expiry)
        external
        whenNotPaused
        returns (uint256 depositId)
    {
        return _deposit(symbol, usdtAmount, maxPricePerShare, expiry);
    }

    function _deposit(bytes32 symbol, uint256 usdtAmount, uint256 maxPrice, uint256 expiry)
        private
        returns (uint256 depositId)
    {
        if (usdtAmount == 0) revert ZeroAmount();
        if (!isListed[symbol]) revert SymbolNotListed(symbol);
        depositId = requestIdWithTerms(
            KIND_DEPOSIT, msg.sender, nonces[msg.sender]++, symbol, usdtAmount, maxPrice, expiry
        );
        deposits[depositId] = DepositInfo(msg.sender, symbol, usdtAmount, false, false);
        uint256 expiresAt = _expiry(expiry);
        depositTerms[depositId] = Terms(maxPrice, expiresAt);
        usdt.safeTransferFrom(msg.sender, address(this), usdtAmount);
        emit Deposit(depositId, msg.sender, symbol, usdtAmount);
        if (maxPrice != 0 || expiry != 0) emit DepositTerms(depositId, maxPrice, expiresAt);
    }

    function _expiry(uint256 expiry) private view returns (uint256) {
        if (expiry == 0) return block.timestamp + defaultExpiry;
        uint256 latest = block.timestamp + MAX_EXPIRY;
        if (expiry <= block.timestamp || expiry > latest) revert ExpiryOutOfRange(expiry, latest);
        return expiry;
    }

    function requestCancel(uint256 depositId) external {
        DepositInfo storage d = deposits[depositId];
        if (d.user == address(0)) revert UnknownDeposit(depositId);
        if (d.user != msg.sender) revert NotDepositor(depositId, msg.sender);
        if (d.settled) revert AlreadySettled(depositId);
        if (d.cancelRequested) revert CancelAlreadyRequested(depositId);
        d.cancelRequested = true;
        emit CancelRequested(depositId, msg.sender);
    }

    /// @notice Asks to cancel a redeem not yet settled: Bronco returns what was not sold.
    function requestRedeemCancel(uint256 redeemId) external {
        RedeemInfo storage r = redeems[redeemId];
        if (r.user == address(0)) revert UnknownRedeem(redeemId);
        if (r.user != msg.sender) revert NotRedeemer(redeemId, msg.sender);
        if (r.settled) revert AlreadySettled(redeemId);
        if (redeemCancelRequested[redeemId]) revert CancelAlreadyRequested(redeemId);
        redeemCancelRequested[redeemId] = true;
        emit RedeemCancelRequested(redeemId, msg.sender);
    }

    /// @notice A market redeem with the default expiry.
    function redeem(bytes32 symbol, uint256 shares)
        external
        whenNotPaused
        returns (uint256 redeemId)
    {
        return _redeem(symbol, shares, 0, 0);
    }

    /// @notice A redeem that sells at no less than `minPricePerShare` (USDT base units per
    /// whole share; 0 = no bound) until `expiry` (unix seconds; 0 = the default expiry).
    function redeem(bytes32 symbol, uint256 shares, uint256 minPricePerShare, uint256 expiry)
        external
        whenNotPaused
        returns (uint256 redeemId)
    {
        return _redeem(symbol, shares, minPricePerShare, expiry);
    }

    function _redeem(bytes32 symbol, uint256 shares, uint256 minPrice, uint256 expiry)
        private
        returns (uint256 redeemId)
    {
        if (shares == 0) revert ZeroAmount();
        StockToken token = tokenOf[symbol];
        if (address(token) == address(0)) revert SymbolNotListed(symbol);
        redeemId = requestIdWithTerms(
            KIND_REDEEM, msg.sender, nonces[msg.sender]++, symbol, shares, minPrice, expiry
        );
        redeems[redeemId] = RedeemInfo(msg.sender, symbol, shares, false);
        uint256 expiresAt = _expiry(expiry);
        redeemTerms[redeemId] = Terms(minPrice, expiresAt);
        token.burn(msg.sender, shares);
        emit Redeem(redeemId, msg.sender, symbol, shares);
        if (minPrice != 0 || expiry != 0) emit RedeemTerms(redeemId, minPrice, expiresAt);
    }

    // --- settlement (operator, at most once per id) -----------------------------------------

    /// @notice Settles one deposit the operator names in full: reverts AlreadySettled for a
    /// settled id, DepositMismatch when the record at the id is another deposit.
    function settleDeposit(
        uint256 depositId,
        address user,
        bytes32 symbol,
        uint256 usdtAmount,
        uint256 sharesToMint,
        uint256 usdtRefund
    ) external onlyRole(OPERATOR_ROLE) {
        _settleDeposit(
            DepositSettlement(depositId, user, symbol, usdtAmount, sharesToMint, usdtRefund, 0, 0, 0),
            false
        );
    }

    /// @notice Settles many deposits in one transaction; an id already settled (earlier, or
    /// earlier in this batch) is skipped with SettlementSkipped, any other invalid element
    /// reverts the whole batch.
    function settleDeposits(DepositSettlement[] calldata items) external onlyRole(OPERATOR_ROLE) {
        if (items.length == 0) revert EmptyBatch();
        for (uint256 i = 0; i < items.length; i++) {
            _settleDeposit(items[i], true);
        }
    }

    function settleRedeem(
        uint256 redeemId,
        address user,
        bytes32 symbol,
        uint256 shares,
        uint256 usdtPaid,
        uint256 sharesReturned
    ) external onlyRole(OPERATOR_ROLE) {
        _settleRedeem(
            RedeemSettlement(redeemId, user, symbol, shares, usdtPaid, sharesReturned, 0, 0, 0),
            false
        );
    }

    function settleRedeems(RedeemSettlement[] calldata items) external onlyRole(OPERATOR_ROLE) {
        if (items.length == 0) revert EmptyBatch();
        for (uint256 i = 0; i < items.length; i++) {
            _settleRedeem(items[i], true);
        }
    }

    /// @notice Settles many deposits and many redeems in one transaction, each list as
    /// settleDeposits and settleRedeems do it (a settled id is skipped with
    /// SettlementSkipped; any other invalid element reverts the whole batch). One transaction
    /// instead of two when a netting cycle settles both sides; EmptyBatch when both are empty.
    function settleBatch(
        DepositSettlement[] calldata depositItems,
        RedeemSettlement[] calldata redeemItems
    ) external onlyRole(OPERATOR_ROLE) {
        if (depositItems.length == 0 && redeemItems.length == 0) revert EmptyBatch();
        for (uint256 i = 0; i < depositItems.length; i++) {
            _settleDeposit(depositItems[i], true);
        }
        for (uint256 i = 0; i < redeemItems.length; i++) {
            _settleRedeem(redeemItems[i], true);
        }
    }

    /// @notice Manual refund of part of a deposit not yet settled, paid to the depositor.
    /// Names the deposit (DepositMismatch otherwise); each refund id pays at most once
    /// (RefundIdUsed), so a retried transaction never pays twice; manual refunds together
    /// never exceed the deposit (RefundAboveDeposit).
    function refundDeposit(
        uint256 depositId,
        address user,
        bytes32 symbol,
        uint256 usdtAmount,
        uint256 refundId,
        uint256 amount
    ) external onlyRole(OPERATOR_ROLE) {
        if (amount == 0) revert ZeroAmount();
        if (refundIdUsed[refundId]) revert RefundIdUsed(refundId);
        DepositInfo storage d = _depositNamed(depositId, user, symbol, usdtAmount);
        if (d.settled) revert AlreadySettled(depositId);
        uint256 refunded = refundedOf[depositId] + amount;
        if (refunded > d.usdtAmount) revert RefundAboveDeposit(depositId, refunded, d.usdtAmount);
        refundIdUsed[refundId] = true;
        refundedOf[depositId] = refunded;
        usdt.safeTransfer(d.user, amount);
        emit DepositRefunded(depositId, refundId, d.user, amount);
    }

    function isDepositSettled(uint256 depositId) external view returns (bool) {
        return deposits[depositId].settled;
    }

    function isRedeemSettled(uint256 redeemId) external view returns (bool) {
        return redeems[redeemId].settled;
    }

    // --- internals -------------------------------------------------------------------------

    function _depositNamed(uint256 depositId, address user, bytes32 symbol, uint256 amount)
        private
        view
        returns (DepositInfo storage d)
    {
        d = deposits[depositId];
        if (d.user == address(0)) revert UnknownDeposit(depositId);
        if (d.user != user || d.symbol != symbol || d.usdtAmount != amount) {
            revert DepositMismatch(
                depositId, user, symbol, amount, d.user, d.symbol, d.usdtAmount
            );
        }
    }

    function _redeemNamed(uint256 redeemId, address user, bytes32 symbol, uint256 shares)
        private
        view
        returns (RedeemInfo storage r)
    {
        r = redeems[redeemId];
        if (r.user == address(0)) revert UnknownRedeem(redeemId);
        if (r.user != user || r.symbol != symbol || r.shares != shares) {
            revert RedeemMismatch(redeemId, user, symbol, shares, r.user, r.symbol, r.shares);
        }
    }

    function _settleDeposit(DepositSettlement memory s, bool batched) private {
        DepositInfo storage d = _depositNamed(s.depositId, s.user, s.symbol, s.usdtAmount);
        if (d.settled) {
            if (!batched) revert AlreadySettled(s.depositId);
            emit SettlementSkipped(KIND_DEPOSIT, s.depositId);
            return;
        }
        uint256 refunded = refundedOf[s.depositId] + s.usdtRefund;
        if (refunded > d.usdtAmount) {
            revert RefundAboveDeposit(s.depositId, refunded, d.usdtAmount);
        }
        if (s.pricePerShare > 0 || s.fee > 0) {
            uint256 charged = (s.sharesToMint * s.pricePerShare) / SHARE + s.fee + refunded;
            if (charged > d.usdtAmount) {
                revert ChargeAboveDeposit(s.depositId, charged, d.usdtAmount);
            }
        }
        _checkDepositTerms(s, d.usdtAmount - refunded);
        d.settled = true;
        if (s.sharesToMint > 0) tokenOf[d.symbol].mint(d.user, s.sharesToMint);
        if (s.usdtRefund > 0) usdt.safeTransfer(d.user, s.usdtRefund);
        emit DepositSettled(s.depositId, d.user, s.sharesToMint, s.usdtRefund);
        if (batched) emit DepositFilled(s.depositId, s.cycleId, s.pricePerShare, s.fee);
    }

    function _settleRedeem(RedeemSettlement memory s, bool batched) private {
        RedeemInfo storage r = _redeemNamed(s.redeemId, s.user, s.symbol, s.shares);
        if (r.settled) {
            if (!batched) revert AlreadySettled(s.redeemId);
            emit SettlementSkipped(KIND_REDEEM, s.redeemId);
            return;
        }
        if (s.sharesReturned > r.shares) {
            revert ReturnAboveRedeem(s.redeemId, s.sharesReturned, r.shares);
        }
        if (s.pricePerShare > 0) {
            uint256 proceeds = ((r.shares - s.sharesReturned) * s.pricePerShare) / SHARE;
            if (s.usdtPaid + s.fee > proceeds) {
                revert PayoutAboveProceeds(s.redeemId, s.usdtPaid + s.fee, proceeds);
            }
        }
        _checkRedeemTerms(s, r.shares - s.sharesReturned);
        r.settled = true;
        if (s.sharesReturned > 0) tokenOf[r.symbol].mint(r.user, s.sharesReturned);
        if (s.usdtPaid > 0) usdt.safeTransfer(r.user, s.usdtPaid);
        emit RedeemSettled(s.redeemId, r.user, s.usdtPaid, s.sharesReturned);
        if (batched) emit RedeemFilled(s.redeemId, s.cycleId, s.pricePerShare, s.fee);
    }

    /// @dev `spent`: the USDT the deposit keeps (its amount less every refund), fee included.
    function _checkDepositTerms(DepositSettlement memory s, uint256 spent) private view {
        Terms storage t = depositTerms[s.depositId];
        if (t.expiry != 0 && block.timestamp > t.expiry && (s.sharesToMint > 0 || spent > 0)) {
            revert SettlementAfterExpiry(s.depositId, t.expiry, s.sharesToMint);
        }
        uint256 maxFee = quoteFee(deposits[s.depositId].usdtAmount);
        if (s.fee > maxFee) revert FeeAboveSchedule(s.depositId, s.fee, maxFee);
        if (t.priceBound > 0 && s.sharesToMint > 0) {
            uint256 cost = spent > s.fee ? spent - s.fee : 0;
            // cost <= shares * bound, rounded up to the USDT base unit like the cost itself
            if (cost * SHARE > s.sharesToMint * t.priceBound + SHARE - 1) {
                revert PriceAboveBound(s.depositId, (cost * SHARE) / s.sharesToMint, t.priceBound);
            }
        }
    }

    /// @dev `sold`: the shares the redeem sold (burned less returned).
    function _checkRedeemTerms(RedeemSettlement memory s, uint256 sold) private view {
        Terms storage t = redeemTerms[s.redeemId];
        if (t.expiry != 0 && block.timestamp > t.expiry && (sold > 0 || s.usdtPaid > 0)) {
            revert SettlementAfterExpiry(s.redeemId, t.expiry, sold);
        }
        uint256 maxFee = quoteFee(s.usdtPaid + s.fee);
        if (s.fee > maxFee) revert FeeAboveSchedule(s.redeemId, s.fee, maxFee);
        if (t.priceBound > 0 && sold > 0) {
            uint256 gross = s.usdtPaid + s.fee;
            // gross >= sold * bound, rounded down to the USDT base unit like the proceeds
            if (gross < (sold * t.priceBound) / SHARE) {
                revert PriceBelowBound(s.redeemId, (gross * SHARE) / sold, t.priceBound);
            }
        }
    }
}
